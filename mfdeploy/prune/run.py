"""The prune stage end to end: calibrate, score, mask, fold, save (`mfdeploy prune`)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from mfdeploy import __version__
from mfdeploy.artifacts.io import atomic_dir, check_out_dir, write_json
from mfdeploy.errors import UserError
from mfdeploy.models import Adapter, load
from mfdeploy.models.inputs import CalibSource, calibration_pairs, pair_batches, pairs_available, parse_calib
from mfdeploy.models.integrity import artifact_records
from mfdeploy.models.loader import ORIGIN_FILE
from mfdeploy.progress import progress_display
from mfdeploy.prune.criteria import METHODS
from mfdeploy.prune.masks import apply_masks, compute_masks, save_masks, sparsity_report
from mfdeploy.prune.patterns import parse_pattern
from mfdeploy.prune.stats import collect_stats
from mfdeploy.zoo import is_bundled

SPECIAL_METHODS = ("ecoflap", "mope")  # methods with their own flow (prune/ecoflap.py, prune/structured.py)


@dataclass
class PruneConfig:
    """Everything `mfdeploy prune` needs; built by the CLI, never from CLI objects."""

    ratio: float
    model: str | None = None  # None = bundled
    method: str = "multiflow"
    scope: str | None = None
    pattern: str | None = None
    calib: str | None = None  # "shapes" | PAIRS.jsonl; default shapes for the bundled model
    calib_samples: int = 256
    batch_size: int = 32
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    show_progress: bool = True
    # ecoflap
    ecoflap_smax_delta: float = 0.1
    ecoflap_samples: int = 32
    # mope
    mope_head_dim_group: int = 0
    mope_neuron_group: int = 64
    mope_depth_share: float = 0.0
    distill_steps: int = 0


def validate(cfg: PruneConfig) -> tuple[int, int] | None:
    """Check the configuration before any work; returns the parsed N:M pattern."""
    if not 0.0 < cfg.ratio < 1.0:
        raise UserError(f"--ratio {cfg.ratio}: must be strictly between 0 and 1")
    known = list(METHODS) + list(SPECIAL_METHODS)
    if cfg.method not in known:
        raise UserError(f"unknown method {cfg.method!r}: choose one of {', '.join(known)}")
    try:
        pattern = parse_pattern(cfg.pattern)
    except ValueError as e:
        raise UserError(f"--pattern: {e}") from None
    if pattern is not None:
        n, m = pattern
        if cfg.method in SPECIAL_METHODS:
            raise UserError(f"--method {cfg.method} works with unstructured sparsity only; "
                            f"drop --pattern {cfg.pattern}")
        if abs(cfg.ratio - (1 - n / m)) > 1e-9:
            raise UserError(f"--pattern {cfg.pattern} fixes every layer at {1 - n / m:g} sparsity; "
                            f"--ratio {cfg.ratio} cannot hold (use --ratio {1 - n / m:g})")
    if cfg.method in METHODS:
        scopes = METHODS[cfg.method].scopes
        if cfg.scope is not None and cfg.scope not in scopes:
            raise UserError(f"--scope {cfg.scope} is not available for {cfg.method} (choose: {', '.join(scopes)})")
    if cfg.calib_samples <= 0 or cfg.batch_size <= 0:
        raise UserError("--calib-samples and --batch-size must be positive")
    delta = cfg.ecoflap_smax_delta
    if not (math.isfinite(delta) and delta >= 0.0):
        raise UserError(f"--smax-delta {delta}: must be 0 or more (ECoFLaP caps each block at "
                        "ratio + delta; 0 prunes every block at exactly the ratio)")
    if cfg.distill_steps and cfg.method != "mope":
        raise UserError("--distill-steps applies to --method mope only")
    if cfg.method == "mope" and (cfg.include or cfg.exclude):  # it cuts heads, neurons, layers in every block
        raise UserError("--include/--exclude do not apply to --method mope, which prunes every layer of both "
                        "towers: drop them, or use an unstructured method")
    return pattern


def calibration_source(cfg: PruneConfig, needs: bool) -> CalibSource | None:
    """The calibration source: explicit, or the shapes world for the bundled model."""
    source = parse_calib(cfg.calib)
    if source is None and needs:
        if not is_bundled(cfg.model):
            raise UserError(f"--calib is required for {cfg.model}: a JSONL file of image-caption pairs "
                            "(the shapes world only fits the bundled model)")
        source = CalibSource("shapes")
    return source


def prune_model(adapter: Adapter, cfg: PruneConfig, source: CalibSource | None = None) -> dict:
    """Compute masks and fold them into `adapter.model` in place. Returns the record for prune.json.

    `source` overrides `cfg.calib` (the Python API's in-memory pairs or batches).
    """
    pattern = validate(cfg)
    layers = adapter.prunable_layers(cfg.include or None, cfg.exclude or None)
    if not layers:
        raise UserError("no prunable layers left after --include/--exclude")
    needs_calib = cfg.method in SPECIAL_METHODS or METHODS[cfg.method].needs_activations
    source = source or calibration_source(cfg, needs_calib)
    # what the source really holds (a short JSONL file yields fewer than asked): sizes the bar, goes on record
    used = calibration_pairs(source, cfg.calib_samples) if source else 0
    timings: dict[str, float] = {}
    record: dict = {}
    with progress_display(cfg.show_progress) as prog:
        if cfg.method == "ecoflap":
            from mfdeploy.prune.ecoflap import ecoflap_masks

            assert source is not None
            masks, info, timings = ecoflap_masks(adapter, layers, cfg, source, prog)
            record["zeroth_order_pairs"] = pairs_available(source, cfg.ecoflap_samples)
        elif cfg.method == "mope":
            from mfdeploy.prune.structured import mope_prune

            assert source is not None
            return mope_prune(adapter, cfg, source, prog, used)
        else:
            act = None
            if needs_calib:
                assert source is not None
                t0 = time.perf_counter()
                task = prog.add_task("calibration pairs", total=used)
                stats = collect_stats(adapter, layers, pair_batches(adapter, source, cfg.calib_samples,
                                                                    cfg.batch_size),
                                      progress=lambda n: prog.advance(task, n))
                act = stats.norms()
                timings["calibration_s"] = time.perf_counter() - t0
                record["calibration_tokens"] = {"vision": max(v for k, v in stats.tokens.items()
                                                              if layers[k].modality == "vision"),
                                                "text": max(v for k, v in stats.tokens.items()
                                                            if layers[k].modality == "text")}
            t0 = time.perf_counter()
            task = prog.add_task("scoring layers", total=len(layers))
            masks, info = compute_masks(layers, cfg.method, cfg.ratio, cfg.scope, pattern, act, cfg.seed,
                                        progress=lambda _n: prog.advance(task))
            timings["scoring_s"] = time.perf_counter() - t0
    apply_masks(adapter.model, masks)
    report = sparsity_report(masks, layers)
    record.update({
        "model": adapter.model_id,
        "method": cfg.method,
        "ratio": cfg.ratio,
        "pattern": cfg.pattern or "unstructured",
        "scope": info.get("scope"),
        "seed": cfg.seed,
        "calibration": {"source": source.describe() if source else None, "samples": used,
                        "requested": cfg.calib_samples if source else 0, "batch_size": cfg.batch_size},
        "include": cfg.include, "exclude": cfg.exclude,
        "dense_layers": info.get("dense_layers", []),
        "sparsity": report,
        "timings": timings,
        "mfdeploy_version": __version__,
    })
    for key in ("block_budgets", "block_scores"):
        if key in info:
            record[key] = info[key]
    record["_masks"] = masks
    return record


def run_prune(cfg: PruneConfig, out: Path, force: bool = False) -> dict:
    """`mfdeploy prune`: write masks.safetensors, pruned/, prune.json and sparsity.png into `out`."""
    validate(cfg)
    out = Path(out)
    check_out_dir(out, force)
    t0 = time.perf_counter()
    adapter = load(cfg.model)
    record = prune_model(adapter, cfg)
    with atomic_dir(out, force) as tmp:
        write_prune_outputs(adapter, record, tmp)
        record["timings"]["total_s"] = time.perf_counter() - t0
        # sha256 of every file, as build.json has: `load` checks pruned/ and masks.safetensors against it
        record["artifacts"] = artifact_records(tmp)
        write_json(tmp / "prune.json", record_for_json(record))
    return record


def record_for_json(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def write_prune_outputs(adapter: Adapter, record: dict, out: Path) -> None:
    """masks.safetensors (unstructured), pruned/ checkpoint, sparsity.png."""
    from mfdeploy.prune.plot import plot_sparsity

    masks = record.get("_masks")
    if masks is not None:
        save_masks(out / "masks.safetensors", masks, {
            "method": record["method"], "ratio": record["ratio"], "pattern": record["pattern"],
            "model_id": record["model"], "seed": record["seed"],
        })
    adapter.save(out / "pruned")
    origin = {"model_id": record["model"], "method": record["method"], "ratio": record["ratio"],
              "pattern": record["pattern"], "mfdeploy_version": __version__}
    (out / "pruned" / ORIGIN_FILE).write_text(json.dumps(origin, indent=2))
    adapter.origin = origin  # the in-memory model is now the pruned one: exports made from it say so
    if "_structure" in record:
        from mfdeploy.models.structure import STRUCTURE_FILE

        (out / "pruned" / STRUCTURE_FILE).write_text(json.dumps(record["_structure"], indent=2))
    plot_sparsity(record, out / "sparsity.png")


__all__ = ["PruneConfig", "prune_model", "run_prune", "validate"]
