"""Layer budgets: how many weights each layer loses, for a target sparsity.

A budget is independent of the score that later picks *which* weights go
(`--budget` vs `--method`). `uniform`, `global` and `modality` are computed
here from the weights alone; `ecoflap` needs the model and calibration pairs
and lives in `mfdeploy.prune.methods.ecoflap`.
"""

from __future__ import annotations

import math

import torch

from mfdeploy.models.base import PrunableLayer


def _pooled_counts(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, int]:
    """Prune counts per layer from one magnitude threshold over the pooled `|W|` of these layers.

    `k = floor(s * N)` weights lie at or below the threshold `t`; each layer
    loses its own weights below `t`, and ties at `t` go to layers in order
    until exactly `k` are pruned (so the pool ends exactly at `s`).
    """
    total = sum(w.numel() for w in weights.values())
    k = math.floor(sparsity * total)
    if k == 0:
        return dict.fromkeys(weights, 0)
    pooled = torch.cat([w.detach().float().abs().flatten() for w in weights.values()])  # [N]
    t = torch.kthvalue(pooled, k).values
    del pooled
    below = {n: int((w.detach().float().abs() < t).sum()) for n, w in weights.items()}
    ties = {n: int((w.detach().float().abs() == t).sum()) for n, w in weights.items()}
    remaining = k - sum(below.values())
    counts = {}
    for n in weights:
        take = min(ties[n], remaining)
        counts[n] = below[n] + take
        remaining -= take
    return counts


BUDGETS = ("uniform", "global", "modality", "ecoflap")
STATIC_BUDGETS = ("uniform", "global", "modality")  # computable from the weights alone


def layer_budgets(layers: dict[str, PrunableLayer], sparsity: float, budget: str) -> dict[str, int]:
    """Number of weights to prune in each layer.

    Args:
        layers: prunable layers by name.
        sparsity: target fraction of prunable weights set to zero.
        budget: "uniform" (each layer at `s`), "global" (one magnitude threshold
            over all layers), "modality" (one threshold per modality: MULTIFLOW's
            multimodal distribution prior, eq. 7).
    """
    if budget == "uniform":
        return {n: math.floor(sparsity * l.module.weight.numel()) for n, l in layers.items()}
    if budget == "global":
        return _pooled_counts({n: l.module.weight for n, l in layers.items()}, sparsity)
    if budget == "modality":
        counts: dict[str, int] = {}
        for modality in dict.fromkeys(l.modality for l in layers.values()):
            group = {n: l.module.weight for n, l in layers.items() if l.modality == modality}
            counts.update(_pooled_counts(group, sparsity))
        return {n: counts[n] for n in layers}
    raise ValueError(f"unknown budget {budget!r}: choose one of {', '.join(STATIC_BUDGETS)}")
