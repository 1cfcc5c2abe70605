"""TensorRT explicit-quantization towers (`--target trt`) with NVIDIA ModelOpt's ONNX quantizer.

ModelOpt inserts QuantizeLinear/DequantizeLinear pairs where TensorRT wants
them (int8, or fp8 on GPUs that have it), with the weights stored as int8
behind DequantizeLinear (`dq_only`), calibrates the activation scales (max)
on the CPU provider with the same calibration feeds as `--target ort`, and
keeps the graph's other ops in fp32: `trtexec --int8 --fp16` (or `mfdeploy
engine --int8`) then picks FP16 for the float parts. ONNX Runtime's CPU
provider runs this graph too (slowly: it does not fuse it), which is what the
parity gate uses. ModelOpt runs in a child process (`trt_worker.py` says why).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy.artifacts.tempdirs import owned_tempdir
from mfdeploy.errors import UserError
from mfdeploy.quantize.calib import Feed

MODES = ("int8", "fp8")


def _private_copy(src: Path, folder: Path) -> Path:
    """A copy of the tower `src` in `folder`, its external data files (the big towers') with it."""
    import shutil

    import onnx

    model = onnx.load(str(src), load_external_data=False)
    files = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    for rel in (src.name, *sorted(files)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.parent / rel, folder / rel)
    return (folder / src.name).resolve()


def quantize_trt(src: Path, dst: Path, nodes: list[str], feeds: list[Feed], mode: str = "int8",
                 verbose: bool = False) -> dict[str, Any]:
    """Write ModelOpt's QDQ graph of the tower `src` to `dst`.

    Args:
        src: fp32 tower.
        dst: output file.
        nodes: names of the nodes to quantize (the rest stays float).
        feeds: calibration inputs.
        mode: "int8" or "fp8".
        verbose: show ModelOpt's logs.

    Returns:
        What was done: quantizer, mode, calibration method and provider.
    """
    if mode not in MODES:
        raise UserError(f"--mode {mode}: expected one of {', '.join(MODES)}")
    if not feeds:
        raise UserError("ModelOpt quantization needs calibration pairs (got none)")
    try:
        mo_version = version("nvidia-modelopt")
    except PackageNotFoundError:
        raise UserError("--target trt needs NVIDIA ModelOpt: pip install 'mfdeploy[modelopt]'") from None
    with owned_tempdir("mfdeploy-modelopt-") as tmp:  # a SIGKILL's leftovers: swept by the next run
        arrays: dict[str, Any] = {f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()}
        arrays["__count__"] = np.array(len(feeds))
        np.savez(Path(tmp) / "feeds.npz", **arrays)
        # absolute paths: the worker runs in `tmp`; ModelOpt rewrites the graph it is given (an export's fp32
        # towers changed on disk, found by `quantize`'s sha256 check of its source): it gets a copy
        job = {"src": str(_private_copy(Path(src), Path(tmp) / "src")), "dst": str(Path(dst).resolve()),
               "nodes": nodes, "mode": mode,
               "verbose": verbose,
               "feeds": str(Path(tmp) / "feeds.npz")}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "mfdeploy.quantize.trt_worker", str(Path(tmp) / "job.json")],
                              cwd=tmp,  # ORT's debug dumps (failed shape inference) land here, not in the user's
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])},
                              stdout=None if verbose else subprocess.DEVNULL,
                              stderr=None if verbose else subprocess.PIPE, text=True)
    if proc.returncode != 0 or not Path(dst).is_file():
        lines = (proc.stderr or "").strip().splitlines()
        raise UserError(f"ModelOpt could not quantize {Path(src).name}: "
                        f"{lines[-1] if lines else f'exit code {proc.returncode}'}")
    return {"quantizer": f"modelopt.onnx.quantization {mo_version}", "mode": mode,
            "format": "QDQ (TensorRT explicit quantization), int8 weights behind DequantizeLinear",
            "calibration_method": "max", "calibration_provider": "CPUExecutionProvider",
            "float_parts": "fp32 in the graph; FP16 at engine build (--int8 --fp16)"}
