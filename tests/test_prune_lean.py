"""Memory-lean unstructured pruning: the same masks as the old pooled-|W| path, bit for bit.

The budget threshold is now a radix selection over float32 bit patterns and
masks are folded layer by layer; the reference here is the old implementation
(the whole pool concatenated, `torch.kthvalue`, masks folded after the loop).
"""

from __future__ import annotations

import math

import pytest
import torch

from mfdeploy.models import load
from mfdeploy.pruning import SCORES, PruneConfig, prune_model
from mfdeploy.pruning import budgets as budgets_mod
from mfdeploy.pruning.methods import unstructured
from mfdeploy.zoo import BUNDLED_DIR


def old_pooled_counts(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, int]:
    """The old implementation: concatenate every |W| of the pool, take the k-th value."""
    total = sum(w.numel() for w in weights.values())
    k = math.floor(sparsity * total)
    if k == 0:
        return dict.fromkeys(weights, 0)
    pooled = torch.cat([w.detach().float().abs().flatten() for w in weights.values()])
    t = torch.kthvalue(pooled, k).values
    below = {n: int((w.detach().float().abs() < t).sum()) for n, w in weights.items()}
    ties = {n: int((w.detach().float().abs() == t).sum()) for n, w in weights.items()}
    remaining = k - sum(below.values())
    counts = {}
    for n in weights:
        take = min(ties[n], remaining)
        counts[n] = below[n] + take
        remaining -= take
    return counts


def _pool(gen: torch.Generator, trial: int) -> dict[str, torch.Tensor]:
    """Five layers of varied shape and scale; some with ties, exact (signed) zeros, fp16, transposes."""
    pool = {}
    for i in range(5):
        out, inp = (int(torch.randint(1, 40, (1,), generator=gen)) for _ in range(2))
        w = torch.randn(out, inp, generator=gen) * 10.0 ** int(torch.randint(-6, 3, (1,), generator=gen))
        if trial % 3 == 0:
            w = (w * 4).round() / 4  # many ties
        if trial % 4 == 1:
            w[w.abs() < w.abs().mean()] = -0.0  # a pruned model pruned again: -0.0 and +0.0
        if trial % 5 == 2:
            w = w.half()
        if trial % 7 == 3:
            w = w.t()
        if trial % 11 == 4:
            w[0, 0], w[-1, -1] = float("inf"), 1e-44  # infinity and a subnormal
        pool[f"l{i}"] = w
    return pool


def test_radix_threshold_matches_kthvalue():
    gen = torch.Generator().manual_seed(0)
    for trial in range(44):
        pool = _pool(gen, trial)
        for s in (0.0, 0.1, 0.5, 0.75, 0.999, 1.0):
            assert budgets_mod._pooled_counts(pool, s) == old_pooled_counts(pool, s), (trial, s)


def _prune(method, budget, pattern):
    cfg = PruneConfig(ratio=0.5, model=str(BUNDLED_DIR), method=method, budget=budget, pattern=pattern,
                      calib_samples=8, batch_size=4, seed=0, show_progress=False)
    adapter = load(BUNDLED_DIR)
    return adapter, prune_model(adapter, cfg)


CASES = ([(s, b, None) for s in SCORES for b in ("uniform", "global", "modality")]
         + [(s, None, "2:4") for s in SCORES])


@pytest.mark.parametrize("score,budget,pattern", CASES)
def test_masks_identical_to_the_old_path(monkeypatch, score, budget, pattern):
    adapter, rec = _prune(score, budget, pattern)
    with monkeypatch.context() as m:  # the old path: pooled kthvalue, masks folded after every layer is scored
        m.setattr(budgets_mod, "_pooled_counts", old_pooled_counts)
        compute = unstructured.compute_masks
        m.setattr(unstructured, "compute_masks", lambda *a, **kw: compute(*a, **{**kw, "fold": False}))
        old_adapter, old_rec = _prune(score, budget, pattern)
    masks, old_masks = rec["_masks"], old_rec["_masks"]
    assert masks.keys() == old_masks.keys()
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and torch.equal(mask, old_masks[name]), name
    old_params = dict(old_adapter.model.named_parameters())
    for name, p in adapter.model.named_parameters():  # the folded weights too, bit for bit (signed zeros included)
        assert torch.equal(p.detach().view(torch.int32), old_params[name].detach().view(torch.int32)), name
