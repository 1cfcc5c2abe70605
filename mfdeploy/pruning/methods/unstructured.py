"""Score-based pruning (random, magnitude, wanda, multiflow, and ECoFLaP's local step): one implementation.

A score ranks the weights inside a layer (`criteria.SCORES`); a layer budget
says how many each layer loses (`budgets.layer_budgets`, or ECoFLaP's
zeroth-order block budgets). The two are independent: any score runs with
any budget, and N:M patterns replace the budget by a fixed per-group count.
"""

from __future__ import annotations

import time

from mfdeploy.pruning.criteria import SCORES
from mfdeploy.pruning.masks import compute_masks
from mfdeploy.pruning.result import MethodResult, PruneContext
from mfdeploy.pruning.stats import collect_stats


def prune_unstructured(score: str, ctx: PruneContext) -> MethodResult:
    """Masks from `score` at the context's layer budget (or N:M pattern).

    Args:
        score: a key of `SCORES`.
        ctx: the prune context; `ctx.budget` is uniform | global | modality | ecoflap (None with a pattern).

    Returns:
        The masks (already folded into the weights, layer by layer), timings and calibration tokens.
    """
    if ctx.budget == "ecoflap":
        from mfdeploy.pruning.methods.ecoflap import prune_ecoflap_budget

        return prune_ecoflap_budget(ctx, score)
    spec = SCORES[score]
    cfg = ctx.cfg
    timings: dict[str, float] = {}
    extra: dict = {}
    act = None
    if spec.needs_activations:
        t0 = time.perf_counter()
        stats = collect_stats(ctx.adapter, ctx.layers, ctx.batches(cfg.calib_samples, cfg.batch_size),
                              progress=ctx.reporter.task("calibration pairs", total=ctx.used))
        act = stats.norms()
        timings["calibration_s"] = time.perf_counter() - t0
        extra["calibration_tokens"] = {m: max(v for k, v in stats.tokens.items() if ctx.layers[k].modality == m)
                                 for m in dict.fromkeys(l.modality for l in ctx.layers.values())}
    t0 = time.perf_counter()
    advance = ctx.reporter.task("scoring layers", total=len(ctx.layers))
    masks, info = compute_masks(ctx.layers, score, cfg.ratio, ctx.budget, ctx.pattern, act, cfg.seed,
                                progress=lambda _name: advance(1), fold=True)
    timings["scoring_s"] = time.perf_counter() - t0
    return MethodResult(masks=masks, timings=timings, dense_layers=info["dense_layers"], extra=extra)


__all__ = ["prune_unstructured"]
