"""MoPE-CLIP style structured pruning: width (heads, MLP neuron groups), then depth (whole layers).

Module-wise Pruning Error of a module: how much a cross-modal quality
measure degrades when the module is removed. Here `Z` is the model family's
own training loss (`adapter.pair_loss`: CLIP's symmetric contrastive loss,
SigLIP's sigmoid loss) on up to 128 calibration pairs (continuous and cheap; recall
on a few hundred pairs is too noisy to rank 200 modules), so
`MoPE(theta) = L(model without theta) - L(model)`: higher = more important.
With the shapes world those pairs come from seeds apart from the ones
distillation trains on; with a JSONL file they are its first pairs, which
distillation trains on too (the record says which).

Removing a head = zeroing its out_proj input columns; a neuron group = its
fc2 input columns; a layer = its out_proj and fc2 (weights and biases), which
makes the residual block the identity. Kept modules are then physically cut
out of the weight matrices (see `mfdeploy.models.structure`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from mfdeploy.errors import UserError
from mfdeploy.models import structure as st
from mfdeploy.models.base import Adapter
from mfdeploy.models.inputs import Batch, CalibSource
from mfdeploy.pruning.record import budget_by_role_from_counts, role_counts
from mfdeploy.pruning.result import MethodResult, PruneContext

Index = slice | tuple[slice, slice]  # the part of a parameter a module's removal zeroes
HELD_OUT_OFFSET = 500_000  # shapes: Z's pairs come from seeds the distillation pairs (offset 0) never reach
Z_MAX_PAIRS = 128


class _Z:
    """The family's loss of the model on fixed pairs, caching the tower that a change does not touch."""

    def __init__(self, adapter: Adapter, batches: Sequence[Batch]):
        self.adapter = adapter
        self.batches = batches
        self.vision, self.text = adapter.vision_tower(), adapter.text_tower()
        self.pairs = adapter.pair_scorer()
        self.refresh()

    @torch.inference_mode()
    def refresh(self) -> None:
        self.img = [self.vision(b.pixel_values) for b in self.batches]
        self.txt = [self.text(b.input_ids, b.attention_mask) for b in self.batches]
        self.base = self.loss()

    @torch.inference_mode()
    def loss(self, changed: str | None = None) -> float:
        total = 0.0
        for b, img, txt in zip(self.batches, self.img, self.txt):
            if changed == "vision":
                img = self.vision(b.pixel_values)
            elif changed == "text":
                txt = self.text(b.input_ids, b.attention_mask)
            total += float(self.pairs.loss(img, txt))
        return total / len(self.batches)


@torch.no_grad()
def _error_without(z: _Z, modality: str, tensors: list[tuple[torch.Tensor, Index]]) -> float:
    """MoPE of the module whose parameters are zeroed by `tensors` [(param, index)]."""
    saved = [(p, idx, p[idx].clone()) for p, idx in tensors]
    try:
        for p, idx, _ in saved:
            p[idx] = 0
        return z.loss(modality) - z.base
    finally:
        for p, idx, value in saved:
            p[idx] = value


def _layers(adapter: Adapter, tower: str) -> Sequence[st.EncoderLayer]:
    return st.encoder_layers(adapter.model, tower)


def width_plan(n_heads: int, inter: int, group: int, keep_frac: float, where: str) -> tuple[int, int]:
    """Heads and neuron groups kept in a layer for a width keep fraction."""
    heads = round(keep_frac * n_heads)
    if heads < 1:
        raise UserError(f"this ratio would remove every attention head of {where} "
                        f"({n_heads} heads, width keep fraction {keep_frac:.3f}): lower --ratio or raise --depth-share")
    groups = max(1, round(keep_frac * math.ceil(inter / group)))
    return heads, groups


def prune_mope(ctx: PruneContext) -> MethodResult:
    """Width then depth structured pruning of both towers in place (distillation, if asked, follows in `prune_model`).

    Args:
        ctx: the prune context (method "mope"); `ctx.adapter`'s model is cut in place.

    Returns:
        No masks (weights are cut out): the structure, a per-block sparsity report, the
        per-role budget, and the module errors behind each choice.
    """
    from mfdeploy.data.batching import pairs_available

    adapter, cfg, source = ctx.adapter, ctx.cfg, ctx.source
    assert source is not None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    dense_prunable = _prunable_counts(adapter)
    dense_blocks = _block_counts(adapter)
    dense_roles = role_counts(adapter)
    group = cfg.mope_neuron_group
    if group <= 0:
        raise UserError("--neuron-group must be positive")
    n_pairs = pairs_available(source, min(cfg.calib_samples, Z_MAX_PAIRS), offset=_offset(source))
    batches = list(ctx.batches(n_pairs, min(cfg.batch_size, n_pairs), offset=_offset(source)))
    z = _Z(adapter, batches)
    record: dict = {"z": _z_description(adapter, source, n_pairs, bool(cfg.distill_steps)), "z_pairs": n_pairs,
                    "z_held_out": source.kind == "shapes", "dense_loss": z.base}

    # depth budget: layers removed per tower, the rest of the ratio comes from width
    depth_plan: dict[str, tuple[int, int]] = {}  # tower -> (layers, layers to drop)
    keep_frac = {}
    for tower in st.TOWER_ATTRS:
        n_layers = len(_layers(adapter, tower))
        n_drop = round(cfg.mope_depth_share * cfg.ratio * n_layers)
        if n_drop >= n_layers:
            raise UserError(f"--depth-share {cfg.mope_depth_share} would remove every layer of the {tower}")
        keep_frac[tower] = (1 - cfg.ratio) * n_layers / (n_layers - n_drop)
        if keep_frac[tower] > 1:
            raise UserError(f"--depth-share {cfg.mope_depth_share} removes more than --ratio {cfg.ratio} by itself")
        depth_plan[tower] = (n_layers, n_drop)

    # width: MoPE of every head and neuron group, uniform target width per layer
    width_scores: dict[str, dict] = {}  # layer -> errors of its heads and neuron groups, heads kept
    total = sum(l.self_attn.q_proj.out_features // st.head_dim(l.self_attn) + math.ceil(l.mlp.fc1.out_features / group)
                for t in st.TOWER_ATTRS for l in _layers(adapter, t))
    advance = ctx.reporter.task("MoPE width (heads, neurons)", total=total)
    for tower in st.TOWER_ATTRS:
        modality = "vision" if tower == "vision_model" else "text"
        for i, layer in enumerate(_layers(adapter, tower)):
            attn, mlp = layer.self_attn, layer.mlp
            hd = st.head_dim(attn)
            n_heads = attn.q_proj.out_features // hd
            heads_keep, groups_keep = width_plan(n_heads, mlp.fc1.out_features, group, keep_frac[tower],
                                                 f"{tower} layer {i}")
            head_err = []
            for h in range(n_heads):
                cols = slice(h * hd, (h + 1) * hd)
                head_err.append(_error_without(z, modality, [(attn.out_proj.weight, (slice(None), cols))]))
                advance(1)
            inter = mlp.fc1.out_features
            starts = list(range(0, inter, group))
            group_err = []
            for s in starts:
                cols = slice(s, min(s + group, inter))
                group_err.append(_error_without(z, modality, [(mlp.fc2.weight, (slice(None), cols))]))
                advance(1)
            top_heads = sorted(torch.tensor(head_err).argsort(descending=True, stable=True)[:heads_keep].tolist())
            top_groups = torch.tensor(group_err).argsort(descending=True, stable=True)[:groups_keep].tolist()
            neurons = torch.cat([torch.arange(starts[g], min(starts[g] + group, inter)) for g in sorted(top_groups)])
            st.prune_heads(attn, top_heads)
            st.prune_neurons(mlp, neurons)
            width_scores[f"{tower}.encoder.layers.{i}"] = {"heads": head_err, "neuron_groups": group_err,
                                                           "kept_heads": top_heads}
    timings["width_s"] = time.perf_counter() - t0

    # depth: MoPE of each (width-pruned) layer, drop the lowest
    t0 = time.perf_counter()
    z.refresh()
    depth_scores = {}
    final_kept = {}
    for tower in st.TOWER_ATTRS:
        modality = "vision" if tower == "vision_model" else "text"
        n_layers, n_drop = depth_plan[tower]
        errs = []
        for layer in _layers(adapter, tower):
            a, m = layer.self_attn.out_proj, layer.mlp.fc2
            errs.append(_error_without(z, modality, [(a.weight, slice(None)), (a.bias, slice(None)),
                                                     (m.weight, slice(None)), (m.bias, slice(None))]))
        order = torch.tensor(errs).argsort(descending=True, stable=True)
        kept = sorted(order[: n_layers - n_drop].tolist())
        st.keep_layers(adapter.model, tower, kept)
        final_kept[tower] = kept
        depth_scores[tower] = errs
    timings["depth_s"] = time.perf_counter() - t0

    after = _prunable_counts(adapter)
    record.update({"neuron_group": group, "depth_share": cfg.mope_depth_share,
                   "mope_width": width_scores, "mope_depth": depth_scores})
    sparsity = {
        "overall": 1 - sum(after.values()) / sum(dense_prunable.values()),
        "per_modality": {k: 1 - after[k] / dense_prunable[k] for k in dense_prunable},
        "per_layer": _per_block_sparsity(adapter, dense_blocks, final_kept),
        "prunable_weights": sum(dense_prunable.values()),
        "kind": "fraction of prunable parameters removed",
    }
    calibration = {"samples": n_pairs, "z_pairs": n_pairs}  # distillation records its own pairs
    return MethodResult(masks=None, timings=timings, calibration=calibration,
                        structure=st.describe(adapter.model, final_kept), sparsity=sparsity,
                        budget_by_role=budget_by_role_from_counts(dense_roles, role_counts(adapter)), extra=record)


def _block_counts(adapter: Adapter) -> dict[str, tuple[str, int]]:
    """Prunable parameters per transformer block (model order)."""
    out: dict[str, tuple[str, int]] = {}
    for layer in adapter.prunable_layers().values():
        mod, n = out.get(layer.block, (layer.modality, 0))
        out[layer.block] = (mod, n + layer.module.weight.numel())
    return out


def _per_block_sparsity(adapter: Adapter, dense: dict[str, tuple[str, int]], kept: dict[str, list[int]]) -> dict:
    """Fraction of each original block's prunable parameters removed (1.0 for dropped layers)."""
    now = _block_counts(adapter)
    out = {}
    for block, (modality, n) in dense.items():
        tower, _, _, idx = block.split(".")
        position = kept[tower].index(int(idx)) if int(idx) in kept[tower] else None
        left = now[f"{tower}.encoder.layers.{position}"][1] if position is not None else 0
        out[block] = {"modality": modality, "sparsity": 1 - left / n, "numel": n}
    return out


def _offset(source: CalibSource) -> int:
    return HELD_OUT_OFFSET if source.kind == "shapes" else 0


def _z_description(adapter: Adapter, source: CalibSource, n_pairs: int, distill: bool) -> str:
    """What Z was measured on, as it happened (for prune.json)."""
    what = f"{adapter.family.loss_name} on "
    if source.kind == "shapes":
        return what + (f"{n_pairs} shapes-world calibration pairs (seeds from offset {HELD_OUT_OFFSET}, "
                       "held out from the pairs distillation trains on)")
    where = f"the first {n_pairs} pairs of {source.describe()}"
    return what + where + (", the same pairs distillation then trains on (not held out)" if distill else "")


def _prunable_counts(adapter: Adapter) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer in adapter.prunable_layers().values():
        counts[layer.modality] = counts.get(layer.modality, 0) + layer.module.weight.numel()
    return counts
