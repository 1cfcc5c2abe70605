"""Accuracy of a TensorRT engine against ONNX Runtime, with polygraphy's Comparator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy.artifacts.layout import PARITY_INPUTS
from mfdeploy.exporting.spec import model_limits

# Engine vs ONNX Runtime on unit-norm embeddings (entries ~ 1/sqrt(D)). FP32 builds keep TF32 off
# (polygraphy's default), so they agree to float rounding; FP16 keeps about 3 significant digits.
TOLERANCES = {"fp32": {"atol": 1e-3, "min_cosine": 0.9999}, "fp16": {"atol": 2e-2, "min_cosine": 0.999},
              # INT8 engine vs ONNX Runtime on the same QDQ graph: TensorRT fuses the scales differently and
              # runs the float parts in FP16
              "int8": {"atol": 5e-2, "min_cosine": 0.99}}


def engine_feeds(onnx_dir: Path, profiles: dict[str, dict[str, dict[str, list[int]]]]) -> dict[str, list[dict]]:
    """Feed dicts that fit each profile: the real inputs `mfdeploy export` kept, else random ones.

    Two feeds per tower: the largest batch the samples and the profile allow,
    and one unpadded sample at batch 1.
    """
    path = Path(onnx_dir) / PARITY_INPUTS
    max_batch = profiles["vision"]["pixel_values"]["max"][0]
    max_len = profiles["text"]["input_ids"]["max"][1]
    if path.is_file():
        with np.load(path) as z:
            pv, ids, mask = z["pixel_values"], z["input_ids"], z["attention_mask"]
    else:  # an export from another tool: random pixels, random tokens ending in EOS
        limits = model_limits(onnx_dir)
        rng = np.random.default_rng(0)
        size, vocab = limits.get("image_size"), limits.get("vocab_size")
        pv = rng.standard_normal((8, 3, size, size)).astype(np.float32) if size else None
        ids = rng.integers(0, vocab, (8, max_len)) if vocab else None
        mask = None
        if ids is not None and vocab:
            ids[:, -1] = limits.get("eos_token_id", vocab - 1)
            mask = np.ones_like(ids)
    feeds: dict[str, list[dict]] = {"vision": [], "text": []}
    takes = profiles["text"]  # the graph's inputs: a family's text tower may take input_ids alone
    if pv is not None:
        feeds["vision"] = [{"pixel_values": pv[:max_batch]}, {"pixel_values": pv[:1]}]
    if ids is not None and mask is not None:
        keep = mask.sum(1) <= max_len  # right padding: a row fits if its real tokens fit
        ids, mask = ids[keep][:max_batch].astype(np.int64), mask[keep][:max_batch].astype(np.int64)
        if len(ids):
            width = int(mask.sum(1).max())
            first = int(mask[0].sum())
            runs = [{"input_ids": ids[:, :width], "attention_mask": mask[:, :width]},
                    {"input_ids": ids[:1, :first], "attention_mask": mask[:1, :first]}]
            feeds["text"] = [{k: v for k, v in run.items() if k in takes} for run in runs]
    return feeds


def _compare_func(atol: float):
    try:
        from polygraphy.comparator import SimpleCompareFunc  # newer polygraphy: CompareFunc.simple is deprecated
    except ImportError:
        from polygraphy.comparator import CompareFunc

        return CompareFunc.simple(atol=atol, rtol=0.0, check_error_stat="max")
    return SimpleCompareFunc(atol=atol, rtol=0.0, check_error_stat="max")


def compare_with_onnxrt(onnx_path: Path, runner: Any, feeds: list[dict[str, np.ndarray]], fp16: bool,
                        int8: bool = False) -> dict[str, Any]:
    """Run ONNX Runtime (CPU) and `runner` (a polygraphy TrtRunner) on `feeds` and compare.

    Polygraphy's simple comparison checks the max abs error against `atol`
    with rtol 0 (its check passes when either tolerance holds, and a relative
    error means little on entries near 0); the min per-row cosine is computed
    from the same outputs and must also clear its bound.
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    tol = TOLERANCES["int8" if int8 else "fp16" if fp16 else "fp32"]
    reference = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"]), name="onnxrt")
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        results = Comparator.run([reference, runner], data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, compare_func=_compare_func(tol["atol"]))
    from mfdeploy.exporting.parity import embedding_errors  # lazily: parity imports torch

    abs_errs, cosines = [], []
    for ref_it, got_it in zip(results[reference.name], results[runner.name], strict=True):
        for name, ref in ref_it.items():
            errors = embedding_errors(np.asarray(ref), np.asarray(got_it[name]))
            abs_errs.append(errors["max_abs_err"])
            cosines.append(errors["min_cosine"])
    max_abs, min_cos = float(np.max(abs_errs)), float(np.min(cosines))  # np.max/np.min keep a NaN
    passed = bool(accuracy) and bool(min_cos >= tol["min_cosine"])
    return {"passed": passed, "comparator_passed": bool(accuracy), "max_abs_err": max_abs, "min_cosine": min_cos,
            "atol": tol["atol"], "min_cosine_required": tol["min_cosine"],
            "batches": [list(next(iter(f.values())).shape) for f in feeds]}
