"""ModelOpt's ONNX quantizer in a child process: `python -m mfdeploy.quantize.trt_worker JOB.json`.

ModelOpt patches ONNX Runtime's calibrators when it quantizes (class
attributes of `onnxruntime.quantization.calibrate`, for good), after which
ONNX Runtime's own static quantization fails in the same process. Running it
here keeps the parent's ONNX Runtime intact, and its logs (an NVML error on
every machine without a GPU) out of the user's terminal unless asked.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np


def _ignore_empty_tensorrt() -> None:
    """Tell ModelOpt there is no TensorRT when `import tensorrt` finds only an empty package (type stubs).

    ModelOpt probes custom TensorRT layers whenever `import tensorrt` succeeds,
    and fails with "module 'tensorrt' has no attribute 'Logger'" on the stubs.
    """
    from modelopt.onnx import trt_utils

    if getattr(trt_utils, "TRT_PYTHON_AVAILABLE", False) and not hasattr(getattr(trt_utils, "trt", None), "Logger"):
        trt_utils.TRT_PYTHON_AVAILABLE = False


def main(job_path: str) -> int:
    """Run one job: `{"src", "dst", "nodes", "mode", "feeds" (npz), "verbose"}`; print errors as one line."""
    job = json.loads(open(job_path).read())
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        print(f"--target trt needs NVIDIA ModelOpt (pip install 'mfdeploy[modelopt]'): {e}", file=sys.stderr)
        return 3
    from mfdeploy.quantize.calib import feed_reader

    _ignore_empty_tensorrt()
    data = np.load(job["feeds"])
    count = int(data["__count__"])
    feeds = [{k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}/")} for i in range(count)]
    try:
        quantize(job["src"], quantize_mode=job["mode"], calibration_data_reader=feed_reader(feeds),
                 calibration_method="max", calibration_eps=["cpu"],
                 nodes_to_quantize=[f"^{re.escape(n)}$" for n in job["nodes"]], output_path=job["dst"],
                 high_precision_dtype="fp32", dq_only=True, log_level="INFO" if job["verbose"] else "CRITICAL")
    except Exception as e:  # noqa: BLE001 - ModelOpt's failures are untyped; the parent turns this into one line
        text = str(e).strip().splitlines()
        print(f"{type(e).__name__}: {text[0] if text else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
