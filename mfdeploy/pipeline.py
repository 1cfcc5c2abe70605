"""`mfdeploy build`: prune once, fold, export both towers, build engines where possible, evaluate, report.

Everything is written into a temporary sibling of the output directory,
which is renamed into place only when every stage succeeded; `build.json`
(the manifest) is written last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfdeploy import __version__
from mfdeploy.errors import UserError
from mfdeploy.io import atomic_dir, check_out_dir, write_json
from mfdeploy.prune.run import PruneConfig, record_for_json, validate, write_prune_outputs
from mfdeploy.zoo import is_bundled

STAGES = ("load", "evaluate dense", "export dense", "parity dense", "prune", "export", "parity", "quantize",
          "engine", "engine dense", "evaluate pruned", "evaluate int8", "report")


@dataclass
class BuildConfig:
    """What `mfdeploy build` does; the prune part is a `PruneConfig`."""

    prune: PruneConfig
    out: Path = Path("build")
    fp16: bool = False
    sparse: str = "auto"
    opset: int = 17
    max_batch: int = 32
    max_text_len: int | None = None
    eval_data: str | None = None  # None: the shapes suite for the bundled model, no evaluation otherwise
    dense_onnx: bool = True  # also export the dense towers (onnx_dense/) and, on a GPU, build engines_dense/
    force: bool = False
    int8: bool = False  # also onnx_int8/ and onnx_qdq/ (mfdeploy.quantize), engines from onnx_qdq/
    extra: dict[str, Any] = field(default_factory=dict)


def _versions() -> dict[str, str | None]:
    from mfdeploy.export.pipeline import _versions as export_versions

    return {"mfdeploy": __version__, **export_versions()}


def _artifacts(root: Path) -> dict[str, dict]:
    from mfdeploy.io import sha256

    return {str(p.relative_to(root)): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "build.json"}


def eval_data_for(cfg: BuildConfig) -> str | None:
    """The evaluation data of a build: `--eval`, else the shapes suite for the bundled model, else none."""
    return cfg.eval_data or ("shapes" if is_bundled(cfg.prune.model) else None)


def planned_stages(cfg: BuildConfig) -> list[str]:
    """The stages `run_build` will run for `cfg` on this machine, in order (a subset of `STAGES`)."""
    from mfdeploy.export import engine_status

    skip = set()
    if eval_data_for(cfg) is None:
        skip |= {"evaluate dense", "evaluate pruned", "evaluate int8"}
    if not cfg.int8:
        skip |= {"quantize", "evaluate int8"}
    if not cfg.dense_onnx:
        skip |= {"export dense", "parity dense", "engine dense"}
    if engine_status()["status"] != "available":
        skip.add("engine dense")  # the engine stage still runs: it records why and the trtexec commands
    return [s for s in STAGES if s not in skip]


def run_build(cfg: BuildConfig, on_stage: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the whole pipeline; returns the manifest written to `cfg.out/build.json`.

    `on_stage(name, step, total)` is called as each stage starts: its place
    among the stages that run here (`planned_stages`), counted from 1.
    """
    from mfdeploy.eval import evaluate_model, retention
    from mfdeploy.export import build_engines, check_parity, export_towers
    from mfdeploy.export.spec import check_opset
    from mfdeploy.models import load
    from mfdeploy.progress import console_reporter
    from mfdeploy.prune.run import prune_model
    from mfdeploy.quantize.build import evaluate_int8, quantize_build

    validate(cfg.prune)
    check_opset(cfg.opset)
    if cfg.sparse not in ("auto", "on", "off"):
        raise UserError(f"--sparse {cfg.sparse}: expected auto, on or off")
    out = Path(cfg.out)
    check_out_dir(out, cfg.force)
    eval_data = eval_data_for(cfg)
    plan = planned_stages(cfg)
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name, plan.index(name) + 1, len(plan))

    def timed(name: str, fn, *args, **kwargs):
        stage(name)
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name.replace(" ", "_") + "_s"] = round(time.perf_counter() - t0, 2)
        return result

    adapter = timed("load", load, cfg.prune.model)
    if cfg.max_text_len is not None and cfg.max_text_len > adapter.max_text_len:
        raise UserError(f"--max-text-len {cfg.max_text_len} exceeds the model's {adapter.max_text_len} positions")
    dense_eval = timed("evaluate dense", evaluate_model, adapter, eval_data) if eval_data else None
    with atomic_dir(out, cfg.force) as tmp:
        if eval_data is None:
            timings["evaluate_dense_s"] = 0.0
        parity_dense = None
        if "export dense" in plan:
            timed("export dense", export_towers, adapter, tmp / "onnx_dense", opset=cfg.opset)
            # the same gate as the pruned towers, against the dense torch model before pruning mutates it
            parity_dense = timed("parity dense", _dense_parity, check_parity, adapter, tmp / "onnx_dense")
        with console_reporter(cfg.prune.show_progress) as reporter:
            record = timed("prune", prune_model, adapter, cfg.prune, reporter=reporter)
        write_prune_outputs(adapter, record, tmp)
        prune_json = record_for_json(record)
        write_json(tmp / "prune.json", prune_json)
        exported = timed("export", export_towers, adapter, tmp / "onnx", opset=cfg.opset)
        parity = timed("parity", check_parity, adapter, tmp / "onnx", save_inputs=True)
        quant = timed("quantize", quantize_build, adapter, tmp, cfg.prune.calib) if cfg.int8 else None
        # --int8: engines from the QDQ towers; their weights are int8, so a 2:4 build asks for sparse kernels
        sparse = "on" if cfg.int8 and cfg.sparse == "auto" and prune_json["pattern"] == "2:4" else cfg.sparse
        engine = timed("engine", build_engines, tmp / ("onnx_qdq" if cfg.int8 else "onnx"), fp16=cfg.fp16,
                       sparse=sparse, max_batch=cfg.max_batch, max_text_len=cfg.max_text_len,
                       out_dir=tmp / "engines", record_file=None, int8=cfg.int8)
        engine_dense = None
        if "engine dense" in plan:
            # the dense baseline `mfdeploy bench` times the trt backend against: same precision and
            # profiles, dense kernels (the dense weights hold no 2:4 pattern to exploit)
            engine_dense = timed("engine dense", build_engines, tmp / "onnx_dense", fp16=cfg.fp16, sparse="off",
                                 max_batch=cfg.max_batch, max_text_len=cfg.max_text_len, out_dir=tmp / "engines_dense",
                                 record_file=None)
        _fail_on_engine_parity(engine, engine_dense)
        # the build ran in `tmp`, renamed to `out` at the end: record the folders the commands run in there
        engine["trtexec_cwd"] = str(out / ("onnx_qdq" if cfg.int8 else "onnx"))
        if engine_dense is not None:
            engine_dense["trtexec_cwd"] = str(out / "onnx_dense")
        pruned_eval = timed("evaluate pruned", evaluate_model, adapter, eval_data) if eval_data else None
        int8_eval = timed("evaluate int8", evaluate_int8, adapter, tmp / "onnx_int8", eval_data) \
            if "evaluate int8" in plan else None
        evaluation = None
        if pruned_eval is not None and dense_eval is not None:
            evaluation = {"data": eval_data, "dense": _scores(dense_eval), "pruned": _scores(pruned_eval),
                          "retention": retention(pruned_eval, dense_eval)}
            if int8_eval is not None:
                evaluation.update(int8=_scores(int8_eval), retention_int8=retention(int8_eval, dense_eval))
        stage("report")
        manifest = {
            "mfdeploy_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": prune_json["model"],
            "method": prune_json["method"],
            "score": prune_json["score"],
            "budget": prune_json["budget"],
            "ratio": prune_json["ratio"],
            "pattern": prune_json["pattern"],
            "seed": prune_json["seed"],
            # seconds: the activation-statistics pass alone (None for methods without one, e.g. ecoflap
            # and mope, whose steps are timed separately in prune_timings)
            "calibration": {**prune_json["calibration"],
                            "seconds": _rounded(prune_json["timings"].get("calibration_s"))},
            "prune_timings": {k: _rounded(v) for k, v in prune_json["timings"].items()},
            "sparsity": prune_json["sparsity"],
            "budget_by_role": prune_json["budget_by_role"],
            "onnx": {"opset": exported.get("opset"), "towers": exported.get("towers")},
            "parity": {"onnx_vs_torch": parity, "onnx_dense_vs_torch": parity_dense,
                       "engine_vs_onnx": engine.get("parity"),
                       "engine_dense_vs_onnx": engine_dense.get("parity") if engine_dense else None,
                       **({"int8_vs_fp32": {k: v["towers"] for k, v in quant.items()}} if quant else {})},
            "quantize": quant,
            "engine": engine,
            "engine_dense": engine_dense,
            "evaluation": evaluation,
            "timings": timings,
            "versions": _versions(),
        }
        if "structure" in prune_json:
            manifest["structure"] = prune_json["structure"]
        from mfdeploy.report import write_report

        write_report(tmp, manifest)
        manifest["artifacts"] = _artifacts(tmp)
        write_json(tmp / "build.json", manifest)  # last: its presence means the build is complete
    return manifest


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


def _dense_parity(check_parity: Callable[..., dict], adapter, onnx_dir: Path) -> dict:
    """`check_parity` of the dense towers; a failure names them (the pruned towers' message does not)."""
    try:
        return check_parity(adapter, onnx_dir)
    except UserError as e:
        raise UserError(f"dense towers ({onnx_dir.name}/): {e}") from None


def _fail_on_engine_parity(engine: dict, engine_dense: dict | None) -> None:
    """An engine that does not match ONNX Runtime fails the build, as `mfdeploy engine` fails."""
    from mfdeploy.export import EngineError

    for name, record in (("engines/", engine), ("engines_dense/", engine_dense)):
        if record is not None and record.get("status") == "parity_failed":
            bad = ", ".join(f"{t} min cosine {p.get('min_cosine', float('nan')):.5f}"
                            for t, p in (record.get("parity") or {}).items() if not p.get("passed", True))
            raise EngineError(f"TensorRT {name} does not match ONNX Runtime within tolerance ({bad}): "
                              "the build is discarded; try without --fp16, or report the model")


def _scores(result: dict) -> dict:
    return {"tasks": result.get("tasks", {}), "retrieval": result.get("retrieval", {})}
