"""Layer budgets: how many weights each layer loses, for a target sparsity.

A budget is independent of the score that later picks *which* weights go
(`--budget` vs `--method`). `uniform`, `global` and `modality` are computed
here from the weights alone; `ecoflap` needs the model and calibration pairs
and lives in `mfdeploy.pruning.methods.ecoflap`.
"""

from __future__ import annotations

import math

import torch

from mfdeploy.models.base import PrunableLayer


def _abs_bits(w: torch.Tensor) -> torch.Tensor:
    """`|W|` as float32 bit patterns, `[numel]` int32: one layer-sized temporary.

    Clearing the sign bit of a float32 is `abs`, and for non-negative floats
    (zero, subnormals and infinity included) the integer order of the bit
    patterns is the value order: selecting on the bits selects on `|W|`.
    """
    return w.detach().float().reshape(-1).view(torch.int32) & 0x7FFFFFFF


# radix levels over the 31 value bits of a non-negative float32: (shift, width). Two levels: each pass over
# the weights costs more than the small per-layer histograms it keeps (int32, 128-256 KB per layer).
_LEVELS = ((16, 15), (0, 16))


def _level_hist(bits: torch.Tensor, prefix: int, shift: int, width: int) -> torch.Tensor:
    """Counts of `bits` (overwritten) whose higher bits are below / equal to / above `prefix`, by this level's digit.

    `[2**width + 2]` int32: bin 0 counts the values below the prefix's range, bin
    `1 + d` those in it with digit `d`, the last bin those above it.
    """
    key = bits.bitwise_right_shift_(shift) if shift else bits  # [numel], in place: `bits` is a temporary
    if shift + width == 31:  # the first level: its digits are the top bits, nothing lies below or above
        return torch.nn.functional.pad(torch.bincount(key, minlength=1 << width), (1, 1)).int()
    key.sub_((prefix << width) - 1).clamp_(0, (1 << width) + 1)  # below -> 0, digit d -> 1 + d, above -> last
    return torch.bincount(key, minlength=(1 << width) + 2).int()


def _pooled_counts(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, int]:
    """Prune counts per layer from one magnitude threshold over the pooled `|W|` of these layers.

    `k = floor(s * N)` weights lie at or below the threshold `t` (the k-th
    smallest `|W|`); each layer loses its own weights below `t`, and ties at
    `t` go to layers in order until exactly `k` are pruned (so the pool ends
    exactly at `s`).

    The pool is never materialised: `t` is found digit by digit over the
    float32 bit patterns of `|W|` (a radix selection, two passes over the
    layers, one layer's bits alive at a time), counting into small per-layer
    histograms, which also give every layer's count below and at `t`. Same `t`
    and counts as `torch.kthvalue` over the concatenated `|W|`.
    """
    total = sum(w.numel() for w in weights.values())
    k = math.floor(sparsity * total)
    if k == 0:
        return dict.fromkeys(weights, 0)
    below = dict.fromkeys(weights, 0)  # per layer: weights whose |W| < t, level by level
    prefix, rank = 0, k  # the digits of t found so far; t's rank among the values sharing them
    hists: dict[str, torch.Tensor] = {}
    device = next(iter(weights.values())).device
    for shift, width in _LEVELS:
        pooled = torch.zeros((1 << width) + 2, dtype=torch.int64, device=device)  # [2**width + 2]
        for n, w in weights.items():
            hists[n] = _level_hist(_abs_bits(w), prefix, shift, width)
            pooled += hists[n].to(device)
        inside = pooled[1:-1].cumsum(0)  # values sharing the prefix, at or below each digit
        digit = int(torch.searchsorted(inside, rank))  # the first digit reaching the rank
        rank -= int(inside[digit - 1]) if digit else 0
        for n, h in hists.items():
            below[n] += int(h[1:1 + digit].sum())
        prefix = (prefix << width) | digit
    ties = {n: int(h[1 + digit]) for n, h in hists.items()}  # digit: t's last digit, h: the last level's
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
