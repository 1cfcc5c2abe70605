"""The checks a prune configuration goes through before any work, against the method registry.

They live apart from `PruneConfig` (`mfdeploy.pruning.config`, plain data): the registry's methods receive the
configuration, so the configuration's module cannot import the registry without an import cycle.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from mfdeploy.errors import UserError
from mfdeploy.pruning.budgets import BUDGETS
from mfdeploy.pruning.config import PruneConfig
from mfdeploy.pruning.methods.mope import single_pair
from mfdeploy.pruning.patterns import parse_pattern
from mfdeploy.pruning.registry import METHODS, needs_calibration


def validate(cfg: PruneConfig) -> tuple[int, int] | None:
    """Check the configuration before any work; returns the parsed N:M pattern."""
    for name, value, kinds in (("ratio", cfg.ratio, (int, float)), ("calib_samples", cfg.calib_samples, (int,)),
                               ("batch_size", cfg.batch_size, (int,)), ("seed", cfg.seed, (int,))):
        if isinstance(value, bool) or not isinstance(value, kinds):  # a Python caller's "0.5" or 0.5 samples
            what = "a number" if float in kinds else "a whole number"
            raise UserError(f"--{name.replace('_', '-')} {value!r}: must be {what}, not {type(value).__name__}")
    if not 0.0 < cfg.ratio < 1.0:
        raise UserError(f"--ratio {cfg.ratio}: must be strictly between 0 and 1")
    if not -(2**63) <= cfg.seed < 2**63:  # what torch's generators take
        raise UserError(f"--seed {cfg.seed}: must fit in 64 bits (from {-(2**63)} to {2**63 - 1})")
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}: choose one of {', '.join(METHODS)}")
    spec = METHODS[cfg.method]
    try:
        pattern = parse_pattern(cfg.pattern)
    except ValueError as e:
        raise UserError(f"--pattern: {e}") from None
    if cfg.budget is not None:
        if cfg.budget not in BUDGETS:
            raise UserError(f"--budget {cfg.budget}: choose one of {', '.join(BUDGETS)}")
        if spec.default_budget is None:
            raise UserError(f"--budget does not apply to --method {cfg.method}, which sets its own structure: "
                            "drop --budget, or use an unstructured method")
        if pattern is not None:
            raise UserError(f"--budget does not apply with --pattern {cfg.pattern}, which fixes every layer at "
                            f"{1 - pattern[0] / pattern[1]:g}: drop one of them")
    if pattern is not None:
        n, m = pattern
        if not spec.patterns:
            raise UserError(f"--method {cfg.method} works with unstructured sparsity only; "
                            f"drop --pattern {cfg.pattern}")
        if abs(cfg.ratio - (1 - n / m)) > 1e-9:
            raise UserError(f"--pattern {cfg.pattern} fixes every layer at {1 - n / m:g} sparsity; "
                            f"--ratio {cfg.ratio} cannot hold (use --ratio {1 - n / m:g})")
    for option, value in (("--calib-samples", cfg.calib_samples), ("--batch-size", cfg.batch_size)):
        if value <= 0:  # the one at fault, with what was given
            raise UserError(f"{option} {value}: must be positive")
    delta = cfg.ecoflap_smax_delta
    if not (math.isfinite(delta) and delta >= 0.0):
        raise UserError(f"--smax-delta {delta}: must be 0 or more (ECoFLaP caps each block at "
                        "ratio + delta; 0 prunes every block at exactly the ratio)")
    if cfg.distill_steps < 0:
        raise UserError(f"--distill-steps {cfg.distill_steps}: must be 0 (no distillation) or more")
    if not (math.isfinite(cfg.distill_lr) and cfg.distill_lr > 0):
        raise UserError(f"--distill-lr {cfg.distill_lr}: must be a positive learning rate (e.g. 1e-4)")
    if cfg.distill_params not in ("all", "prunable"):
        raise UserError(f"--distill-params {cfg.distill_params}: choose all or prunable")
    from mfdeploy.models.device import resolve_device, resolve_dtype

    if resolve_dtype(cfg.dtype) != torch.float32 and cfg.distill_steps:
        raise UserError(f"--distill-steps trains in float32: drop --dtype {cfg.dtype} (or --distill-steps)")
    resolve_device(cfg.device)  # CUDA asked for where there is none: one line, before any work
    if not (math.isfinite(cfg.mope_depth_share) and 0.0 <= cfg.mope_depth_share <= 1.0):
        raise UserError(f"--depth-share {cfg.mope_depth_share}: must be between 0 (width only) and 1 (layers only)")
    from mfdeploy.data.batching import parse_calib

    # more shapes pairs than the world holds, a missing or unreadable JSONL file, or an image of the pairs it
    # will use: named now, not after the model loads (no --calib means the shapes world, for the bundled model);
    # decoded whole where the prune reads them (a truncated file has a good header), as tune's are
    reads = needs_calibration(spec, resolved_budget(cfg, pattern)) or cfg.distill_steps > 0
    parse_calib(str(cfg.calib) if cfg.calib is not None else "shapes", samples=cfg.calib_samples, decode=reads)
    if cfg.method == "mope" and (cfg.include or cfg.exclude):  # it cuts heads, neurons, layers in every block
        raise UserError("--include/--exclude do not apply to --method mope, which prunes every layer of both "
                        "towers: drop them, or use an unstructured method")
    if cfg.method == "mope" and (isinstance(cfg.mope_neuron_group, bool) or not isinstance(cfg.mope_neuron_group, int)
                                 or cfg.mope_neuron_group <= 0):
        raise UserError(f"--neuron-group {cfg.mope_neuron_group!r}: must be a positive whole number of neurons")
    if cfg.method == "mope" and min(cfg.calib_samples, cfg.batch_size) < 2:
        raise UserError(single_pair(f"--calib-samples {cfg.calib_samples}" if cfg.calib_samples < 2
                                    else f"--batch-size {cfg.batch_size}"))
    if cfg.mope_cache is not None and Path(cfg.mope_cache).expanduser().exists() \
            and not Path(cfg.mope_cache).expanduser().is_dir():
        raise UserError(f"--mope-cache {cfg.mope_cache}: is a file, not a folder: name a folder (created when missing)")
    _unused_options(cfg, resolved_budget(cfg, pattern))
    _not_pruned(cfg.model)
    return pattern


def check_cache_outside(cfg: PruneConfig, out: Path) -> None:
    """Refuse a `--mope-cache` that is `out` or inside it: the cache fills it while MoPE scores, so the finished
    output could not be put in place (`out` exists, with files mfdeploy did not list), after all the work."""
    if cfg.mope_cache is None:
        return
    cache, real_out = Path(cfg.mope_cache).expanduser().resolve(), Path(out).expanduser().resolve()
    if cache == real_out or real_out in cache.parents:
        raise UserError(f"--mope-cache {cfg.mope_cache}: inside --out {out}, which the output replaces; choose a "
                        "cache folder outside it")


def _unused_options(cfg: PruneConfig, budget: str | None) -> None:
    """An option of one method (or of distillation) given with another is refused, as --budget with mope is:
    silently ignored, a user would believe it was applied."""
    defaults = {f.name: f.default for f in dataclasses.fields(PruneConfig)}
    mope = cfg.method == "mope"
    rules = (("mope_neuron_group", "--neuron-group", mope, "--method mope"),
             ("mope_depth_share", "--depth-share", mope, "--method mope"),
             ("mope_cache", "--mope-cache", mope, "--method mope"),
             ("ecoflap_smax_delta", "--smax-delta", budget == "ecoflap", "ECoFLaP's budget (--method ecoflap, or "
                                                                         "--budget ecoflap)"),
             ("distill_lr", "--distill-lr", cfg.distill_steps > 0, "--distill-steps N"),
             ("distill_params", "--distill-params", cfg.distill_steps > 0, "--distill-steps N"))
    for field, flag, applies, needs in rules:
        if not applies and getattr(cfg, field) != defaults[field]:
            raise UserError(f"{flag} applies with {needs} only, which this run does not use: drop it")


def _not_pruned(model: str | None) -> None:
    """Refuse an already pruned checkpoint (a prune or build directory): its sparsity and retention would be
    measured against it, not against the dense model it came from."""
    from mfdeploy.models.loader import read_origin, resolve_checkpoint

    if model is None or not Path(str(model)).expanduser().is_dir():  # a hub id, the bundled model, a name in memory
        return
    where, _ = resolve_checkpoint(model)
    origin = read_origin(where) if isinstance(where, Path) else None
    if origin is not None:
        raise UserError(f"{model} is already pruned ({origin.get('method')} {origin.get('ratio')} of "
                        f"{origin.get('model_id')}): prune the dense model it came from (--model "
                        f"{origin.get('model_id')}), at the total ratio you want")


def resolved_budget(cfg: PruneConfig, pattern: tuple[int, int] | None) -> str | None:
    """The layer budget this run uses: --budget, else the method's default; None with N:M or structured."""
    if pattern is not None:
        return None
    return cfg.budget or METHODS[cfg.method].default_budget


__all__ = ["check_cache_outside", "resolved_budget", "validate"]
