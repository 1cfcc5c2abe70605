"""`mfdeploy build`: prune once, export both towers, quantize, build engines where possible, evaluate, report.

The build is a list of named stages (`STAGES`), run in that order. Each
stage is a function of the build's `BuildState`: it reads what earlier stages
wrote into the build's temporary directory and writes its own artifacts
there, and returns its record. No stage works on a model another stage
changed in place: the dense stages load the dense checkpoint, the pruned
stages load the `pruned/` checkpoint the prune stage wrote. The temporary
directory is renamed into place only when every stage succeeded; `build.json`
(the manifest) is written last.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mfdeploy import exporting  # through the package: tests (and users) can wrap a step there
from mfdeploy.artifacts.io import atomic_dir, check_out_dir, write_json
from mfdeploy.artifacts.layout import (
    ENGINES_DENSE_DIR,
    ENGINES_DIR,
    ONNX_DENSE_DIR,
    ONNX_DIR,
    ONNX_INT8_DIR,
    ONNX_QDQ_DIR,
    PRUNE_MANIFEST,
    QUANTIZED_DIRS,
)
from mfdeploy.errors import UserError
from mfdeploy.pipelines.build_state import BuildConfig, BuildState, Stage
from mfdeploy.pipelines.gate import int8_torch_gate, parity_gate
from mfdeploy.pipelines.prune import load_placed, write_prune_outputs
from mfdeploy.progress import Reporter
from mfdeploy.pruning.checks import check_cache_outside
from mfdeploy.pruning.run import record_for_json, validate
from mfdeploy.zoo import is_bundled

log = logging.getLogger(__name__)  # with logging unconfigured (the CLI), a warning prints as one line


# --- the stages ---------------------------------------------------------------------------------------------------
def load_dense(state: BuildState) -> None:
    """Load the dense checkpoint; a profile longer than its text positions, or globs that leave no layer to prune,
    fail here, before any work."""
    from mfdeploy.pruning.run import selected_layers

    adapter = state.model("dense")
    selected_layers(adapter, state.cfg.prune)  # --include/--exclude that leave nothing fail before any work
    if state.cfg.max_text_len is not None and state.cfg.max_text_len > adapter.max_text_len:
        raise UserError(f"--max-text-len {state.cfg.max_text_len} exceeds the model's {adapter.max_text_len} "
                        "positions")
    fixed = adapter.fixed_text_len
    if fixed is not None and state.cfg.max_text_len not in (None, fixed):
        raise UserError(f"--max-text-len {state.cfg.max_text_len}: {adapter.family.title} reads exactly {fixed} "
                        "tokens (every text is padded to that length); leave --max-text-len out")


def evaluate(variant: str) -> Callable[[BuildState], dict]:
    def run(state: BuildState) -> dict:
        from mfdeploy.eval import evaluate_model

        assert state.eval_data is not None  # the stage runs only with evaluation data (`STAGES`)
        return evaluate_model(state.model(variant), state.eval_data)

    return run


def export_dense(state: BuildState) -> dict:
    return exporting.export_towers(state.model("dense"), state.tmp / ONNX_DENSE_DIR, opset=state.cfg.opset)


def parity_dense(state: BuildState) -> dict:
    return parity_gate(state.model("dense"), state.tmp / ONNX_DENSE_DIR, label=f"dense towers ({ONNX_DENSE_DIR}/)")


def prune(state: BuildState) -> dict:
    """Prune a fresh copy of the dense checkpoint; write masks, `pruned/`, sparsity.png and prune.json."""
    from mfdeploy.pruning.run import prune_model

    state.release("dense")  # no stage after this one reads the dense model: its memory goes to pruning
    adapter = load_placed(state.cfg.prune)  # its own copy (on --device, in --dtype): the dense model stays dense
    record = prune_model(adapter, state.cfg.prune, reporter=state.reporter)
    write_prune_outputs(adapter, record, state.tmp)
    prune_json = record_for_json(record)
    write_json(state.tmp / PRUNE_MANIFEST, prune_json)
    return prune_json


def export_pruned(state: BuildState) -> dict:
    return exporting.export_towers(state.model("pruned"), state.tmp / ONNX_DIR, opset=state.cfg.opset)


def parity_pruned(state: BuildState) -> dict:
    return parity_gate(state.model("pruned"), state.tmp / ONNX_DIR, save_inputs=True)


_SAID: set[str] = set()  # warnings a process has printed once


def quantize(state: BuildState) -> dict:
    """onnx_int8/ and onnx_qdq/ from onnx/ (each gated against fp32), then the same torch gate as onnx/."""
    from mfdeploy.quantize.build import qdq_skipped, quantize_build

    adapter = state.model("pruned")
    wanted = state.cfg.int8_targets
    # no ModelOpt: onnx_int8/ alone, recorded (`quantize skipped`), said once a process; not asked for: nothing said
    skipped = qdq_skipped() if "trt" in wanted else None
    if skipped:
        if skipped not in _SAID:  # a process's every build (the Python API's): one line, not one per build
            log.warning("warning: %s", skipped)
            _SAID.add(skipped)
        state.records["quantize skipped"] = {ONNX_QDQ_DIR: skipped}
    calib = state.records["prune"].get("calibration") or {}
    said = 0 < (calib.get("samples") or 0) < (calib.get("requested") or 0)  # prune warned of the same short file
    seen: set[str] = set()

    def warn(msg: str) -> None:  # the quantizers' only warning: fewer calibration pairs than asked, once a build
        if not said and msg not in seen:
            seen.add(msg)
            log.warning("warning: %s", msg)

    targets = tuple(t for t in wanted if not (skipped and t == "trt"))
    summary = quantize_build(adapter, state.tmp, state.cfg.prune.calib, state.cfg.prune.calib_samples, warn=warn,
                             scheme=state.cfg.int8_scheme, targets=targets)
    for folder in summary:
        summary[folder]["vs_torch"] = int8_torch_gate(adapter, state.tmp / folder)
    return summary


def engine(state: BuildState) -> dict:
    """Engines from onnx/ (or, with --int8, from onnx_qdq/); skipped with the trtexec commands without a GPU."""
    cfg = state.cfg
    # --int8: engines from the QDQ towers; their weights are int8, so a 2:4 build asks for sparse kernels
    sparse = "on" if cfg.int8 and cfg.sparse == "auto" and state.records["prune"]["pattern"] == "2:4" else cfg.sparse
    int8 = cfg.int8 and (state.tmp / ONNX_QDQ_DIR).is_dir()  # not made without ModelOpt: fp32 towers, --fp16
    record = exporting.build_engines(state.tmp / (ONNX_QDQ_DIR if int8 else ONNX_DIR), fp16=cfg.fp16, sparse=sparse,
                                     max_batch=cfg.max_batch, max_text_len=cfg.max_text_len,
                                     out_dir=state.tmp / ENGINES_DIR, record_file=None, int8=int8)
    _fail_on_engine_parity(ENGINES_DIR, record)
    return _in_place(record, state)


def engine_dense(state: BuildState) -> dict:
    """The dense baseline `mfdeploy bench` times the trt backend against: same precision and profiles, dense
    kernels (the dense weights hold no 2:4 pattern to exploit)."""
    cfg = state.cfg
    record = exporting.build_engines(state.tmp / ONNX_DENSE_DIR, fp16=cfg.fp16, sparse="off", max_batch=cfg.max_batch,
                                  max_text_len=cfg.max_text_len, out_dir=state.tmp / ENGINES_DENSE_DIR,
                                  record_file=None)
    _fail_on_engine_parity(ENGINES_DENSE_DIR, record)
    return _in_place(record, state)


def _in_place(record: dict, state: BuildState) -> dict:
    """The engine record with its trtexec folder where it will be once the build is in place (not the temporary
    folder it was computed in): the build directory, whose onnx*/ the commands read and engines*/ they write."""
    where = Path(os.path.abspath(record["trtexec_cwd"])).relative_to(os.path.abspath(state.tmp))
    record["trtexec_cwd"] = str(Path(state.cfg.out) / where)
    return record


def evaluate_int8(state: BuildState) -> dict:
    from mfdeploy.quantize.build import evaluate_int8

    assert state.eval_data is not None  # the stage runs only with evaluation data (`STAGES`)
    return evaluate_int8(state.model("pruned"), state.tmp / ONNX_INT8_DIR, state.eval_data)


def report(state: BuildState) -> dict:
    from mfdeploy.pipelines.report import write_build_outputs

    return write_build_outputs(state)


def _engines_here(cfg: BuildConfig, eval_data: str | None) -> bool:
    return cfg.dense_onnx and exporting.engine_status()["status"] == "available"


STAGES: list[Stage] = [
    Stage("load", load_dense),
    Stage("evaluate dense", evaluate("dense"), lambda cfg, data: data is not None),
    Stage("export dense", export_dense, lambda cfg, data: cfg.dense_onnx),
    Stage("parity dense", parity_dense, lambda cfg, data: cfg.dense_onnx),
    Stage("prune", prune),
    Stage("export", export_pruned),
    Stage("parity", parity_pruned),
    Stage("quantize", quantize, lambda cfg, data: cfg.int8),
    Stage("engine", engine),  # runs without a GPU too: it records why it skipped and the trtexec commands
    Stage("engine dense", engine_dense, _engines_here),
    Stage("evaluate pruned", evaluate("pruned"), lambda cfg, data: data is not None),
    Stage("evaluate int8", evaluate_int8, lambda cfg, data: data is not None and cfg.int8),
    Stage("report", report),
]


def eval_data_for(cfg: BuildConfig) -> str | None:
    """The evaluation data of a build: `--eval`, else the shapes suite for the bundled model, else none."""
    if not cfg.evaluate:
        return None
    return cfg.eval_data or ("shapes" if is_bundled(cfg.prune.model) else None)


def planned_stages(cfg: BuildConfig, extra: Sequence[tuple[str, Stage]] = ()) -> list[Stage]:
    """The stages `run_build` will run for `cfg` on this machine, in order (a subset of `STAGES`), with each
    `extra` stage right after the stage it names."""
    data = eval_data_for(cfg)
    plan: list[Stage] = []
    for stage in STAGES:
        if stage.runs(cfg, data):
            plan.append(stage)
            plan.extend(s for after, s in extra if after == stage.name and s.runs(cfg, data))
    return plan


def run_build(cfg: BuildConfig, on_stage: Callable[[str, int, int], None] | None = None,
              reporter: Reporter | None = None, extra: Sequence[tuple[str, Stage]] = ()) -> dict:
    """Run the planned stages; returns the manifest written to `cfg.out/build.json`.

    `on_stage(name, step, total)` is called as each stage starts: its place
    among the stages that run here (`planned_stages`), counted from 1.
    `reporter` shows the prune stage's progress (default: none). `extra`: (stage name, stage) pairs, each run
    right after the named stage (`mfdeploy tune` screens a pruned model before it is exported); a stage that
    raises discards the whole build, as any failed stage does.
    """
    from mfdeploy.data.batching import parse_calib
    from mfdeploy.exporting.spec import check_opset
    from mfdeploy.pruning.checks import resolved_budget
    from mfdeploy.pruning.run import needed_source
    from mfdeploy.quantize.run import check_scheme

    pattern = validate(cfg.prune)
    needed_source(cfg.prune, resolved_budget(cfg.prune, pattern))  # --calib for a model not bundled: now
    if cfg.evaluate and cfg.eval_data and cfg.eval_data != "shapes":
        from mfdeploy.eval import resolve_data

        resolve_data(cfg.eval_data, option="--eval")  # a missing or unreadable --eval: now, not after the load
    for flag, value in (("--max-batch", cfg.max_batch), ("--max-text-len", cfg.max_text_len)):
        if value is not None and value < 1:  # found at the engine stage otherwise, after the prune
            raise UserError(f"{flag} must be 1 or more (got {value})")
    if cfg.int8 and cfg.prune.calib is None and not is_bundled(cfg.prune.model):
        raise UserError(f"--int8 needs --calib for {cfg.prune.model}: INT8 calibration uses image-caption pairs "
                        "(the shapes world only fits the bundled model)")
    if cfg.int8 and cfg.prune.calib is not None:  # INT8 calibration's images decoded whole now, not after the prune
        parse_calib(str(cfg.prune.calib), samples=cfg.prune.calib_samples, decode=True)
    check_opset(cfg.opset)
    check_scheme(cfg.int8_scheme, option="--int8-scheme")
    if cfg.int8 and (not cfg.int8_targets or not set(cfg.int8_targets) <= set(QUANTIZED_DIRS)):
        raise UserError(f"int8 targets {list(cfg.int8_targets)}: expected one or more of {', '.join(QUANTIZED_DIRS)}")
    if cfg.int8_scheme != "auto" and not cfg.int8:
        raise UserError(f"--int8-scheme {cfg.int8_scheme} needs --int8: without it the build quantizes nothing")
    if cfg.sparse not in ("auto", "on", "off"):
        raise UserError(f"--sparse {cfg.sparse}: expected auto, on or off")
    out = Path(cfg.out)
    check_out_dir(out, cfg.force, sources=(cfg.prune.model,))
    check_cache_outside(cfg.prune, out)
    plan = planned_stages(cfg, extra)
    timings: dict[str, float] = {}
    with atomic_dir(out, cfg.force) as tmp:
        state = BuildState(cfg, tmp, eval_data_for(cfg), reporter=reporter)
        state.records["timings"] = timings
        for step, stage in enumerate(plan, 1):
            if on_stage is not None:
                on_stage(stage.name, step, len(plan))
            t0 = time.perf_counter()
            state.records[stage.name] = stage.run(state)
            if stage.name != "report":  # the report is written with the timings in it
                timings[stage.name.replace(" ", "_") + "_s"] = round(time.perf_counter() - t0, 2)
            if stage.name == "load" and state.eval_data is None:
                timings["evaluate_dense_s"] = 0.0  # build.json has always recorded it, 0 when not evaluated
    return state.records["report"]


def _fail_on_engine_parity(folder: str, record: dict) -> None:
    """An engine that does not match ONNX Runtime fails the build, as `mfdeploy engine` fails."""
    if record.get("status") == "parity_failed":
        bad = ", ".join(f"{t} min cosine {p.get('min_cosine', float('nan')):.5f}"
                        for t, p in (record.get("parity") or {}).items() if not p.get("passed", True))
        raise exporting.EngineError(f"TensorRT {folder}/ does not match ONNX Runtime within tolerance ({bad}): "
                                 "the build is discarded; try without --fp16, or report the model")
