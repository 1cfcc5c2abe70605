"""Parity gate of quantized towers: ONNX Runtime (CPU) runs the fp32 and the quantized graph on real inputs.

The inputs are those of the export parity check (`mfdeploy.exporting.parity`):
held-out scenes through the model's own processor, captions of varied
lengths alone, batched, and padded to the model's maximum length. They are
not the calibration pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy.artifacts.layout import TOWERS
from mfdeploy.errors import UserError, first_line
from mfdeploy.exporting.parity import embedding_errors, parity_inputs, text_batches
from mfdeploy.ortsession import ort_session

MIN_COSINE = 0.99  # per-row cosine between the quantized and the fp32 tower's embeddings


def gate_feeds(adapter, n: int = 16) -> dict[str, list[tuple[str, dict[str, np.ndarray]]]]:
    """Labelled runs per tower: the images at full and partial batch, the text runs of the export check."""
    data = parity_inputs(adapter, n)
    pv = data["pixel_values"].numpy()
    vision = [(f"batch {n}", {"pixel_values": pv}), ("batch 1", {"pixel_values": pv[:1]})]
    text = [(label, {k: v.numpy() for k, v in feed.items()}) for label, feed in text_batches(adapter, data["captions"])]
    return {"vision": vision, "text": text}


def compare_tower(fp32: Path, quantized: Path, runs: list[tuple[str, dict[str, np.ndarray]]]) -> dict[str, Any]:
    """Min cosine and max abs error of `quantized` against `fp32` over the runs."""
    ref_s = ort_session(fp32)  # CPU, no spinning: a one-off check
    try:
        q_s = ort_session(quantized)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's errors are untyped
        raise _unrunnable(quantized, e) from None
    worst_cos, worst_err = 1.0, 0.0
    takes = {i.name for i in ref_s.get_inputs()}  # the graph's inputs: a family's text tower may take no mask
    for _label, feed in runs:
        feed = {k: v for k, v in feed.items() if k in takes}
        ref = ref_s.run(None, feed)[0]
        try:
            got = q_s.run(None, feed)[0]
        except Exception as e:  # noqa: BLE001
            raise _unrunnable(quantized, e) from None
        errors = embedding_errors(ref, got)
        worst_cos = float(np.min([worst_cos, errors["min_cosine"]]))
        worst_err = float(np.max([worst_err, errors["max_abs_err"]]))
    return {"min_cosine": worst_cos, "max_abs_err": worst_err, "runs": len(runs)}


def check_towers(fp32_dir: Path, q_dir: Path, feeds: dict[str, list], threshold: float = MIN_COSINE) -> dict[str, Any]:
    """Compare every tower of `q_dir` with the same tower of `fp32_dir`.

    Returns:
        `{"min_cosine_required", "passed", tower: {"min_cosine", "max_abs_err", "runs", "passed"}}`;
        a NaN or a cosine below `threshold` fails.
    """
    result: dict[str, Any] = {"provider": "CPUExecutionProvider", "min_cosine_required": threshold}
    for tower, spec in TOWERS.items():
        rec = compare_tower(Path(fp32_dir) / spec["file"], Path(q_dir) / spec["file"], feeds[tower])
        rec["passed"] = bool(np.isfinite(rec["min_cosine"]) and rec["min_cosine"] >= threshold)
        result[tower] = rec
    result["passed"] = all(result[t]["passed"] for t in TOWERS)
    return result


def failure_line(gate: dict[str, Any], what: str) -> str:
    """One line saying which towers failed the gate and what to do."""
    bad = [f"{t} min cosine {gate[t]['min_cosine']:.4f}" for t in TOWERS if not gate[t]["passed"]]
    return (f"{what} does not match the fp32 towers (required min cosine >= {gate['min_cosine_required']}): "
            + "; ".join(bad) + ". Keep the sensitive layers in float (--keep-float GLOB, or --auto-keep) "
            "or use more calibration pairs")


def _unrunnable(quantized: Path, e: Exception) -> UserError:
    """One line for a quantized tower this ONNX Runtime cannot run, so its parity cannot be checked (an FP8 Q/DQ
    graph on ONNX Runtime 1.23, the newest for Python 3.10; 1.32 runs it)."""
    import onnxruntime

    return UserError(f"{quantized.name}: ONNX Runtime {onnxruntime.__version__} cannot run the quantized tower, so its "
                     f"parity with the fp32 tower cannot be checked ({first_line(e)}); a newer ONNX Runtime may "
                     "(pip install -U onnxruntime, on Python 3.11 or newer)")


FP8_RUNTIME = (1, 24)  # ONNX Runtime 1.23 (the newest for Python 3.10) rejects ModelOpt's FP8 Q/DQ graph; 1.32 runs it


def check_mode(mode: str, target: str) -> None:
    """Refuse, before any work, an FP8 run whose towers could never pass this gate: `--target ort` (no fp8 kernels),
    or an ONNX Runtime of 1.23 or older, which cannot load ModelOpt's FP8 Q/DQ graph (the gate runs both towers on
    it), so the failure came only after calibration and quantization."""
    if mode != "fp8":
        return
    if target == "ort":
        raise UserError("--mode fp8 needs --target trt: ONNX Runtime's CPU provider has no fp8 kernels")
    import re

    import onnxruntime

    found = re.match(r"(\d+)\.(\d+)", str(onnxruntime.__version__))
    if found is not None and (int(found[1]), int(found[2])) < FP8_RUNTIME:
        raise UserError(f"--mode fp8: ONNX Runtime {onnxruntime.__version__} cannot run the FP8 Q/DQ towers ModelOpt "
                        "writes (1.23 and older reject them; 1.32 runs them), so their parity with the fp32 towers "
                        "could not be checked: upgrade it (pip install -U onnxruntime; releases after 1.23 need "
                        "Python 3.11 or newer), or quantize with --mode int8")
