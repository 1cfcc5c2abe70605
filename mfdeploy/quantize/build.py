"""The quantize stage of `mfdeploy build --int8`: `onnx_int8/` and `onnx_qdq/`, their accuracy, their report rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import ONNX_DIR, ONNX_QDQ_DIR, QUANTIZED_DIRS
from mfdeploy.quantize.gate import gate_feeds
from mfdeploy.quantize.run import QuantizeConfig, quantize_towers


def qdq_skipped() -> str | None:
    """Why a build's `onnx_qdq/` cannot be made here (NVIDIA ModelOpt missing), or None: `build --int8` then makes
    ONNX Runtime's `onnx_int8/` alone, as it leaves engines to a machine with TensorRT."""
    from mfdeploy.extras import EXTRAS, missing

    absent = missing("modelopt")
    if not absent:
        return None
    # not `quantize BUILD --target trt --out QDQ`: that folder has no export.json, and bench and serve read a build's
    # engines/ only; `quantize --in-place` rewrites onnx_int8/ alone
    return (f"{ONNX_QDQ_DIR}/ (TensorRT's INT8 towers) not made: {EXTRAS['modelopt'].provides} is not installed (no "
            f"module {absent[0]!r}); pip install 'mfdeploy[modelopt]' and build again with --int8 to make them, or "
            "quantize an export of the build (`mfdeploy export BUILD --out EXPORT`, then `mfdeploy quantize EXPORT "
            "--target trt --out QDQ`)")


def quantize_build(adapter, build_dir: Path, calib: str | None, calib_samples: int = 128,
                   warn=None, scheme: str = "auto", targets: tuple[str, ...] = ("ort", "trt")) -> dict[str, Any]:
    """Quantize a build's `onnx/` for `targets` into `onnx_int8/` and `onnx_qdq/`, each parity-gated.

    `scheme`: `onnx_int8/`'s ONNX Runtime scheme (`--int8-scheme`: auto, static, dynamic); `onnx_qdq/` is
    always TensorRT's static QDQ.

    Returns:
        `{"onnx_int8": summary, "onnx_qdq": summary}` (the folders of `targets`): target, scheme, per-tower min
        cosine and sizes, float-kept nodes (the full records are in each directory's `quantize.json`).

    Raises:
        UserError: a tower fails its gate (min cosine against the fp32 tower below 0.99).
    """
    feeds = gate_feeds(adapter)  # the same real inputs gate both targets
    summary = {}
    for target, name in QUANTIZED_DIRS.items():
        if target not in targets:
            continue
        out = Path(build_dir) / name
        out.mkdir()
        cfg = QuantizeConfig(target=target, calib=calib, calib_samples=calib_samples,
                             scheme=scheme if target == "ort" else "auto")  # TensorRT's QDQ has no scheme
        record = quantize_towers(adapter, Path(build_dir) / ONNX_DIR, out, cfg, warn=warn, gate_inputs=feeds)
        summary[name] = summarize(record)
    return summary


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """build.json's entry for one quantized folder, from its `quantize.json` record."""
    return {
        "target": record["target"], "mode": record["mode"], "scheme": record["scheme"],
        "calibration": record["calibration"],
        "towers": {t: {"scheme": r.get("scheme"), "min_cosine": record["parity"][t]["min_cosine"],
                       "bytes": r["bytes"], "size_ratio": r["size_ratio"], "float_nodes": r["float_nodes"],
                       "quantized_nodes": len(r["quantized_nodes"])} for t, r in record["towers"].items()},
        "passed": record["parity"]["passed"], "min_cosine_required": record["parity"]["min_cosine_required"],
    }


def evaluate_int8(adapter, onnx_dir: Path, data: str) -> dict:
    """Evaluate the ONNX Runtime INT8 towers of a build on `data` (zero-shot tasks, retrieval)."""
    from mfdeploy.eval import evaluate, prepare
    from mfdeploy.eval.datasets import resolve_data
    from mfdeploy.runtime.ort_runner import OrtRunner

    prepared = prepare(adapter, resolve_data(data))
    runner = OrtRunner(onnx_dir, provider="cpu", spin=False)
    try:
        return {"model": adapter.model_id, "backend": "onnx-int8", **evaluate(runner, prepared)}
    finally:
        runner.close()


def report_rows(manifest: dict) -> list[tuple[str, str]]:
    """(what, value) rows of the int8 towers for the build summary and report.md; none without --int8."""
    rows = [(f"{name} (trt)", why) for name, why in (manifest.get("quantize_skipped") or {}).items()]
    for name, q in (manifest.get("quantize") or {}).items():
        cos = ", ".join(f"{t} {v['min_cosine']:.4f} ({v['size_ratio']:.2f}x size)" for t, v in q["towers"].items())
        rows.append((f"{name} ({q['target']}, {q['mode']})", f"min cosine vs fp32: {cos}"))
    ev = manifest.get("evaluation") or {}
    if ev.get("int8"):
        for task, value in ev["int8"]["tasks"].items():
            rows.append((f"  {task} int8", f"{value:.3f} (fp32 pruned {ev['pruned']['tasks'][task]:.3f})"))
        for metric, value in ev["int8"]["retrieval"].items():
            rows.append((f"  {metric} int8", f"{value:.3f} (fp32 pruned {ev['pruned']['retrieval'][metric]:.3f})"))
    return rows
