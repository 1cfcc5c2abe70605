"""Pruning a loaded model: calibrate, score, mask, fold, distil (the files are `mfdeploy.pipelines.prune`'s)."""

from __future__ import annotations

import copy
import time

from mfdeploy._version import __version__
from mfdeploy.errors import UserError, check_globs
from mfdeploy.models import Adapter
from mfdeploy.models.base import PrunableLayer
from mfdeploy.models.inputs import CalibSource, calibration_pairs, parse_calib
from mfdeploy.progress import NullReporter, Reporter
from mfdeploy.pruning.checks import resolved_budget, validate
from mfdeploy.pruning.config import PruneConfig
from mfdeploy.pruning.masks import apply_masks
from mfdeploy.pruning.record import build_record, record_for_json
from mfdeploy.pruning.registry import METHODS, needs_calibration
from mfdeploy.pruning.result import PruneContext
from mfdeploy.zoo import is_bundled


def calibration_source(cfg: PruneConfig, needs: bool) -> CalibSource | None:
    """The calibration source: explicit, or the shapes world for the bundled model."""
    source = parse_calib(cfg.calib)
    if source is None and needs:
        if not is_bundled(cfg.model):
            if isinstance(cfg.model, str):  # a mistyped path is named as such, not as a missing --calib
                from mfdeploy.models import resolve_checkpoint

                resolve_checkpoint(cfg.model)
            raise UserError(f"--calib is required for {cfg.model}: a JSONL file of image-caption pairs "
                            "(the shapes world only fits the bundled model)")
        source = CalibSource("shapes")
    return source


def needed_source(cfg: PruneConfig, budget: str | None) -> CalibSource | None:
    """The calibration source the prune of `cfg` (with its resolved layer `budget`) reads; None when its method,
    budget and recovery need none.

    Raises:
        UserError: a model that is not bundled, with no --calib, where calibration is needed.
    """
    return calibration_source(cfg, needs_calibration(METHODS[cfg.method], budget) or cfg.distill_steps > 0)


def selected_layers(adapter: Adapter, cfg: PruneConfig) -> dict[str, PrunableLayer]:
    """The prunable layers `cfg.include`/`cfg.exclude` leave.

    Raises:
        UserError: a glob that matches no layer, or none left; the message shows what a layer's name looks like.
    """
    every = list(adapter.prunable_layers())
    example = f" (of {len(every)}, named like {every[0]})" if every else ""
    for option, globs in (("--include", cfg.include), ("--exclude", cfg.exclude)):
        check_globs(option, globs, every, "prunable layer")  # a typo would prune what it meant to keep
    layers = adapter.prunable_layers(cfg.include or None, cfg.exclude or None)
    if not layers:
        raise UserError(f"no prunable layers left after --include/--exclude{example}")
    return layers


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
    layers = selected_layers(adapter, cfg)
    source = source or needed_source(cfg, budget)
    # what the source really holds (a short JSONL file yields fewer than asked): sizes the bar, goes on record
    used = calibration_pairs(source, cfg.calib_samples) if source else 0
    if cfg.distill_steps:
        from mfdeploy.pruning.distill import check_split

        assert source is not None  # calibration_source asked for one
        check_split(source, used)
    ctx = PruneContext(adapter, layers, cfg, source, pattern, budget, used, reporter or NullReporter())
    teacher = copy.deepcopy(adapter.model).eval() if cfg.distill_steps else None  # the dense model
    result = spec.run(ctx)
    if result.masks is not None:
        apply_masks(adapter.model, result.masks)  # idempotent where a method already folded them
    if teacher is not None:
        from mfdeploy.pruning.distill import recover

        t0 = time.perf_counter()
        result.extra["distill"] = recover(ctx, teacher, result.masks)
        result.timings["distill_s"] = time.perf_counter() - t0
        del teacher
    record = build_record(ctx, spec, result)
    param = next(adapter.model.parameters())
    record["device"], record["dtype"] = str(param.device), str(param.dtype).removeprefix("torch.")
    # the model is now the pruned one: its exports and evaluations say so (kept on the module: `Adapter.origin`)
    adapter.origin = {"model_id": record["model"], "method": record["method"], "ratio": record["ratio"],
                      "pattern": record["pattern"], "mfdeploy_version": __version__}
    return record


__all__ = ["PruneConfig", "calibration_source", "prune_model", "record_for_json", "validate"]
