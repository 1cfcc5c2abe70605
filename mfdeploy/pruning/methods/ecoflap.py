"""ECoFLaP's layer budget (Sung et al., ICLR 2024, zeroth-order variant): global block budgets, then a
local score per block (Wanda for `--method ecoflap`; any score with `--budget ecoflap`).

1. Each transformer block of either tower is a group.
2. Block score: for each calibration batch and each weight tensor, the
   central difference |L(W+eps z) - L(W-eps z)| / (2 eps) of the model
   family's own training loss (`adapter.pair_loss`: CLIP's symmetric
   contrastive loss, SigLIP's sigmoid loss) along a seeded Gaussian direction
   z; summed per block.
3. Keep budgets: every block starts at ceil(n (1 - s_max)) (see `min_keep` for
   the integer edge s_max = s, which is feasible); the rest of the
   global keep budget is handed out in proportion to the scores, capped at
   n per block, until it is met exactly.
4. The local score at each block's sparsity, block by block in model order,
   each block calibrated on the model with its earlier blocks already pruned
   (Wanda compares within rows, the other scores within the layer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from mfdeploy.errors import UserError
from mfdeploy.models.base import Adapter, PrunableLayer
from mfdeploy.models.inputs import Batch, pairs_available
from mfdeploy.pruning.criteria import SCORES
from mfdeploy.pruning.masks import Masks, param_name
from mfdeploy.pruning.patterns import mask_layer, mask_rows
from mfdeploy.pruning.result import MethodResult, PruneContext
from mfdeploy.pruning.stats import collect_stats

EPS = 1e-3


def direction(weight: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A Gaussian perturbation shaped like `weight`, on its device and in its dtype.

    Drawn from `gen` (a CPU generator) in float32 and then moved, so a seed
    gives the same directions, and so the same block budgets, on every device.
    """
    return torch.randn(weight.shape, generator=gen, dtype=torch.float32).to(weight.device, weight.dtype)


@torch.inference_mode()
def zeroth_order_scores(adapter: Adapter, layers: dict[str, PrunableLayer], batches: Sequence[Batch],
                        seed: int = 0, eps: float = EPS, progress=None) -> dict[str, float]:
    """Per-block zeroth-order importance (sum over the block's tensors and the batches)."""
    vision, text = adapter.vision_tower(), adapter.text_tower()
    pairs = adapter.pair_scorer()  # the family's loss with the model's logit scale (and bias)
    gen = torch.Generator().manual_seed(seed)
    scores = {l.block: 0.0 for l in layers.values()}
    for batch in batches:
        img = vision(batch.pixel_values)
        txt = text(batch.input_ids, batch.attention_mask)
        same = batch.same_image()  # pairs that share an image (a caption list): `Family.loss`
        for layer in layers.values():
            w = layer.module.weight
            z = direction(w, gen)
            original = w.detach().clone()
            losses = []
            try:
                for sign in (1.0, -1.0):
                    w.copy_(original + sign * eps * z)
                    # only the perturbed tower changes: reuse the other tower's embeddings
                    if layer.modality == "vision":
                        losses.append(pairs.loss(vision(batch.pixel_values), txt, same_image=same))
                    else:
                        losses.append(pairs.loss(img, text(batch.input_ids, batch.attention_mask), same_image=same))
            finally:
                w.copy_(original)
            scores[layer.block] += abs(float(losses[0] - losses[1])) / (2 * eps)
            if progress is not None:
                progress()
    return scores


def min_keep(sizes: Sequence[int], sparsity: float, s_max: float) -> np.ndarray:
    """The least each block keeps under the cap: `ceil(n (1 - s_max))`, made to fit the global budget.

    Two integer effects are handled so that `s_max == sparsity` (every block
    at exactly the target) stays feasible:

    - float noise: `100 * (1 - 0.7)` is 30.000000000000004, whose ceiling 31
      would keep one weight too many; a tolerance far below one weight absorbs it.
    - rounding: when `n (1 - s_max)` is fractional, rounding every block up can
      exceed the global keep budget by less than one weight per block; those
      blocks (the ones rounded up the most first) then give one weight back,
      so a block exceeds `s_max` by at most one weight.

    Raises:
        ValueError: `s_max` below `sparsity`, or a budget no allocation can meet.
    """
    n = np.asarray(sizes, dtype=np.int64)
    if s_max < sparsity:
        raise ValueError(f"the cap s_max {s_max} is below the target sparsity {sparsity}")
    total_keep = int(n.sum()) - math.floor(sparsity * int(n.sum()))
    exact = n * (1.0 - s_max)  # [G] float
    keep = np.minimum(np.ceil(exact - 1e-9 * np.maximum(n, 1)).astype(np.int64), n)
    keep = np.maximum(keep, 0)
    excess = int(keep.sum()) - total_keep
    if excess > 0:
        give_back = [g for g in np.argsort(-(keep - exact), kind="stable") if keep[g] > 0][:excess]
        if len(give_back) < excess:
            raise ValueError("no allocation meets the global budget under the cap s_max")
        keep[give_back] -= 1
    return keep


def allocate_keep(sizes: Sequence[int], scores: Sequence[float], sparsity: float, s_max: float) -> list[int]:
    """Capped proportional allocation of the global keep budget (exact).

    Args:
        sizes: prunable weights per block `n_g`.
        scores: block importance (higher keeps more).
        sparsity: global target `s`; exactly `floor(s * sum n)` weights are pruned.
        s_max: no block is pruned beyond `s_max` (each keeps at least `ceil(n (1 - s_max))`).

    Returns:
        weights kept per block.
    """
    n = np.asarray(sizes, dtype=np.int64)
    score = np.asarray(scores, dtype=np.float64).copy()
    total_keep = int(n.sum()) - math.floor(sparsity * int(n.sum()))
    keep = min_keep(sizes, sparsity, s_max)
    remaining = total_keep - int(keep.sum())
    while remaining > 0:
        open_ = keep < n
        weights = np.where(open_, score, 0.0)
        if weights.sum() <= 0:  # every open block scored zero: hand out by capacity
            weights = np.where(open_, (n - keep).astype(np.float64), 0.0)
        share = np.floor(remaining * weights / weights.sum()).astype(np.int64)
        add = np.minimum(share, n - keep)
        if add.sum() == 0:  # rounding left less than one weight per block: highest scores first
            for g in np.argsort(-weights, kind="stable"):
                if remaining == 0:
                    break
                if open_[g]:
                    keep[g] += 1
                    remaining -= 1
            continue
        keep += add
        remaining -= int(add.sum())
        score[keep >= n] = 0.0
    return keep.tolist()


def prune_ecoflap_budget(ctx: PruneContext, score: str) -> MethodResult:
    """ECoFLaP block budgets, then `score` within each block, folded into the model block by block."""
    cfg, layers = ctx.cfg, ctx.layers
    timings: dict[str, float] = {}
    blocks = list(dict.fromkeys(l.block for l in layers.values()))  # model order, as the scores are kept
    sizes = [sum(l.module.weight.numel() for l in layers.values() if l.block == b) for b in blocks]
    s_max = min(1.0, cfg.ratio + cfg.ecoflap_smax_delta)  # a delta past 1 - ratio lets a block go fully sparse
    try:
        min_keep(sizes, cfg.ratio, s_max)  # before the zeroth-order pass: an infeasible cap fails at once
    except ValueError as e:
        raise UserError(f"--smax-delta {cfg.ecoflap_smax_delta}: {e}; use a larger --smax-delta") from None
    t0 = time.perf_counter()
    assert ctx.source is not None
    zo_batches = list(ctx.batches(cfg.ecoflap_samples, min(cfg.batch_size, cfg.ecoflap_samples)))
    advance = ctx.reporter.task("zeroth-order scores", total=len(zo_batches) * len(layers))
    block_scores = zeroth_order_scores(ctx.adapter, layers, zo_batches, cfg.seed, progress=lambda: advance(1))
    timings["zeroth_order_s"] = time.perf_counter() - t0

    keep = allocate_keep(sizes, [block_scores[b] for b in blocks], cfg.ratio, s_max)
    budgets = {b: 1.0 - k / n for b, k, n in zip(blocks, keep, sizes)}

    t0 = time.perf_counter()
    spec = SCORES[score]
    calib = list(ctx.batches(cfg.calib_samples, cfg.batch_size)) if spec.needs_activations else []
    gen = torch.Generator().manual_seed(cfg.seed)  # the random score: CPU draws, the same on every device
    masks: Masks = {}
    advance = ctx.reporter.task(f"{score} block by block", total=len(blocks))
    for b in blocks:  # model order: each block sees the already pruned earlier blocks
        group = {n: l for n, l in layers.items() if l.block == b}
        act = collect_stats(ctx.adapter, group, calib).norms() if spec.needs_activations else {}
        with torch.no_grad():
            for name, layer in group.items():
                w = layer.module.weight
                scores = spec.fn(w, act.get(name), gen)  # [out, in]
                if spec.compare == "row":
                    mask = mask_rows(scores, budgets[b])
                else:
                    mask = mask_layer(scores, math.floor(budgets[b] * w.numel()))
                w.mul_(mask.to(w.dtype))
                masks[param_name(name)] = mask
        advance(1)
    timings["local_pruning_s"] = time.perf_counter() - t0
    masks = {param_name(n): masks[param_name(n)] for n in layers}  # model order
    return MethodResult(masks=masks, timings=timings, extra={
        "zeroth_order_pairs": pairs_available(ctx.source, cfg.ecoflap_samples), "s_max": s_max,
        "block_budgets": budgets, "block_scores": block_scores})
