"""The prune stage end to end: calibrate, score, mask, fold, save (`mfdeploy prune`)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from mfdeploy import __version__
from mfdeploy.artifacts.io import atomic_dir, check_out_dir, write_json
from mfdeploy.artifacts.layout import MASKS_FILE, ORIGIN_FILE, PRUNE_MANIFEST, PRUNED_DIR, SPARSITY_PLOT, STRUCTURE_FILE
from mfdeploy.errors import UserError
from mfdeploy.models import Adapter, load
from mfdeploy.models.inputs import CalibSource, calibration_pairs, parse_calib
from mfdeploy.models.integrity import artifact_records
from mfdeploy.progress import NullReporter, Reporter
from mfdeploy.prune.config import PruneConfig, resolved_budget, validate
from mfdeploy.prune.masks import apply_masks, save_masks
from mfdeploy.prune.record import build_record, record_for_json
from mfdeploy.prune.registry import METHODS, needs_calibration
from mfdeploy.prune.result import PruneContext
from mfdeploy.zoo import is_bundled


def calibration_source(cfg: PruneConfig, needs: bool) -> CalibSource | None:
    """The calibration source: explicit, or the shapes world for the bundled model."""
    source = parse_calib(cfg.calib)
    if source is None and needs:
        if not is_bundled(cfg.model):
            raise UserError(f"--calib is required for {cfg.model}: a JSONL file of image-caption pairs "
                            "(the shapes world only fits the bundled model)")
        source = CalibSource("shapes")
    return source


def prune_model(adapter: Adapter, cfg: PruneConfig, source: CalibSource | None = None,
                reporter: Reporter | None = None) -> dict:
    """Prune `adapter.model` in place with the registered method `cfg.method`. Returns the record for prune.json.

    Args:
        adapter: the model (on any device, in any dtype).
        cfg: the configuration; validated here before any work.
        source: overrides `cfg.calib` (the Python API's in-memory pairs or batches).
        reporter: where progress goes (default: nowhere). Callers that draw, such as the
            CLI, pass `mfdeploy.cli.render.console_reporter(cfg.show_progress)`'s reporter.

    Returns:
        The record (prune.json's entries, plus `_masks` and `_structure` for the writers).
    """
    pattern = validate(cfg)
    spec = METHODS[cfg.method]
    budget = resolved_budget(cfg, pattern)
    layers = adapter.prunable_layers(cfg.include or None, cfg.exclude or None)
    if not layers:
        raise UserError("no prunable layers left after --include/--exclude")
    source = source or calibration_source(cfg, needs_calibration(spec, budget) or cfg.distill_steps > 0)
    # what the source really holds (a short JSONL file yields fewer than asked): sizes the bar, goes on record
    used = calibration_pairs(source, cfg.calib_samples) if source else 0
    if cfg.distill_steps:
        from mfdeploy.prune.distill import check_split

        assert source is not None  # calibration_source asked for one
        check_split(source, used)
    ctx = PruneContext(adapter, layers, cfg, source, pattern, budget, used, reporter or NullReporter())
    teacher = copy.deepcopy(adapter.model).eval() if cfg.distill_steps else None  # the dense model
    result = spec.run(ctx)
    if result.masks is not None:
        apply_masks(adapter.model, result.masks)  # idempotent where a method already folded them
    if teacher is not None:
        from mfdeploy.prune.distill import recover

        t0 = time.perf_counter()
        result.extra["distill"] = recover(ctx, teacher, result.masks)
        result.timings["distill_s"] = time.perf_counter() - t0
        del teacher
    return build_record(ctx, spec, result)


def run_prune(cfg: PruneConfig, out: Path, force: bool = False, reporter: Reporter | None = None) -> dict:
    """`mfdeploy prune`: write masks.safetensors, pruned/, prune.json and sparsity.png into `out`."""
    validate(cfg)
    out = Path(out)
    check_out_dir(out, force)
    t0 = time.perf_counter()
    adapter = load(cfg.model)
    load_s = time.perf_counter() - t0
    record = prune_model(adapter, cfg, reporter=reporter)
    record["timings"]["load_s"] = load_s
    with atomic_dir(out, force) as tmp:
        t1 = time.perf_counter()
        write_prune_outputs(adapter, record, tmp)
        record["timings"]["write_s"] = time.perf_counter() - t1
        record["timings"]["total_s"] = time.perf_counter() - t0
        # sha256 of every file, as build.json has: `load` checks pruned/ and masks.safetensors against it
        record["artifacts"] = artifact_records(tmp)
        write_json(tmp / PRUNE_MANIFEST, record_for_json(record))
    return record


def write_prune_outputs(adapter: Adapter, record: dict, out: Path) -> None:
    """masks.safetensors (unstructured), pruned/ checkpoint, sparsity.png."""
    from mfdeploy.prune.plot import plot_sparsity

    masks = record.get("_masks")
    if masks is not None:
        save_masks(out / MASKS_FILE, masks, {
            "method": record["method"], "score": record["score"], "budget": record["budget"],
            "ratio": record["ratio"], "pattern": record["pattern"], "model_id": record["model"], "seed": record["seed"],
        })
    adapter.save(out / PRUNED_DIR)
    origin = {"model_id": record["model"], "method": record["method"], "ratio": record["ratio"],
              "pattern": record["pattern"], "mfdeploy_version": __version__}
    (out / PRUNED_DIR / ORIGIN_FILE).write_text(json.dumps(origin, indent=2))
    adapter.origin = origin  # the in-memory model is now the pruned one: exports made from it say so
    if "_structure" in record:
        (out / PRUNED_DIR / STRUCTURE_FILE).write_text(json.dumps(record["_structure"], indent=2))
    plot_sparsity(record, out / SPARSITY_PLOT)


__all__ = ["PruneConfig", "prune_model", "record_for_json", "run_prune", "validate", "write_prune_outputs"]
