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

Each error is one tower forward over the pairs, replayed from the module's
layer (`mope_replay`: bit-identical to a full forward, about two thirds of its
cost), and where oneDNN's GEMM is faster, screened with it first: only the
close calls at a layer's keep boundary are then scored exactly, and the
modules kept are the reference's bit for bit (`mope_screen`). With
`--mope-cache DIR` the errors of every layer are kept on disk and reused by
any run that would compute the very same ones (`mope_cache`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch

from mfdeploy.errors import UserError
from mfdeploy.models import structure as st
from mfdeploy.models.base import Adapter
from mfdeploy.models.inputs import CalibSource
from mfdeploy.pruning.methods.mope_cache import ScoreCache
from mfdeploy.pruning.methods.mope_replay import Replay, Z, error_without
from mfdeploy.pruning.methods.mope_screen import LayerChoice, Screen, reference_top_k, width_errors
from mfdeploy.pruning.record import (
    block_counts,
    budget_by_role_from_counts,
    per_block_sparsity,
    prunable_counts,
    role_counts,
)
from mfdeploy.pruning.result import MethodResult, PruneContext

log = logging.getLogger(__name__)  # with logging unconfigured (the CLI), a warning prints as one line
HELD_OUT_OFFSET = 500_000  # shapes: Z's pairs come from seeds the distillation pairs (offset 0) never reach
Z_MAX_PAIRS = 128
# Score each module by replaying its tower from the module's layer (`mope_replay`), bit-identical to a full
# forward per module; False: the full forwards (the reference the tests and benchmarks/mope_scoring.py compare to).
FAST_SCORING = True
# Screen each layer's modules with oneDNN's GEMMs and score only the close calls exactly (`mope_screen`: the same
# masks as the reference); None: where oneDNN's GEMM is measured faster than `linear`. Only with FAST_SCORING.
SCREEN: bool | None = None


def _layers(adapter: Adapter, tower: str) -> Sequence[st.EncoderLayer]:
    return st.encoder_layers(adapter.model, tower)


def width_plan(n_heads: int, inter: int, group: int, keep_frac: float, where: str) -> tuple[int, int]:
    """Heads and neuron groups kept in a layer for a width keep fraction."""
    heads = round(keep_frac * n_heads)
    if heads < 1:
        raise UserError(f"this ratio would remove every attention head of {where} "
                        f"({n_heads} heads, width keep fraction {keep_frac:.3f}): lower --ratio or raise --depth-share")
    return heads, groups_kept(inter, group, keep_frac)


def groups_kept(inter: int, group: int, keep_frac: float) -> int:
    """Neuron groups of `group` kept in an MLP `inter` wide for a width keep fraction (at least one)."""
    return max(1, round(keep_frac * math.ceil(inter / group)))


WIDTH_SLACK = 0.1  # the largest miss of a layer's neuron keep fraction that whole neuron groups may cause


def fitting_group(config: dict, group: int) -> int:
    """`group`, or an eighth of the narrowest MLP of `config` (a Hugging Face dual-encoder config) where that is
    smaller: what `mfdeploy tune` uses, so that one neuron group setting fits models of any width."""
    widths = [c.get("intermediate_size") for c in (config.get("vision_config") or {}, config.get("text_config") or {})]
    narrowest = min((w for w in widths if isinstance(w, int) and w > 0), default=None)
    return group if narrowest is None else max(1, min(group, narrowest // 8))


def single_pair(what: str) -> str:
    """Why MoPE refuses calibration batches of one pair (`what`: the option or data at fault)."""
    return (f"{what}: MoPE measures each module by the loss over the pairs of a calibration batch, and a batch of "
            "one pair has no other pair to contrast with (CLIP's loss is then 0 whatever the model, so every module "
            "would score the same): give at least 2 pairs per batch")


def _check_group(group: int, inter: int, keep_frac: float, ratio: float, where: str) -> None:
    """Refuse a neuron group too coarse for the MLP width: whole groups would keep far more (or fewer) neurons
    than the ratio asks, and the model would come out much less (more) pruned than its label says."""
    kept = min(inter, groups_kept(inter, group, keep_frac) * group)
    if abs(kept / inter - keep_frac) > WIDTH_SLACK:
        raise UserError(f"--neuron-group {group}: the MLPs of the {where} are {inter} wide, so whole groups keep "
                        f"{kept} neurons per layer ({kept / inter:.0%}) where --ratio {ratio} needs about "
                        f"{keep_frac:.0%}; use a group of at most {max(1, inter // 8)}")


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
    dense_prunable = prunable_counts(adapter)
    dense_blocks = block_counts(adapter)
    dense_roles = role_counts(adapter)
    group = cfg.mope_neuron_group  # a positive whole number (`checks.validate`)
    n_pairs = pairs_available(source, min(cfg.calib_samples, Z_MAX_PAIRS), offset=_offset(source))
    batches = list(ctx.batches(n_pairs, min(cfg.batch_size, n_pairs), offset=_offset(source)))
    largest = max((len(b.input_ids) for b in batches), default=0)
    if largest < 2:  # a short JSONL file, or the API's own batches
        raise UserError(single_pair(f"{n_pairs} calibration pair{'s' if n_pairs != 1 else ''} in batches of "
                                     f"{largest}"))
    images = max((len(b) if b.image_ids is None else len(set(b.image_ids.tolist())) for b in batches), default=0)
    if images < 2:  # a caption list of one image: its pairs are not contrasted with each other (`Family.loss`)
        raise UserError(f"{source.describe()}: each calibration batch holds captions of one image, which MoPE's loss "
                        "does not contrast with each other (every module would score the same): give pairs of at "
                        "least 2 images")
    # the cache's keys start from the dense model: fingerprinted before anything is cut
    base = ScoreCache.base_of(adapter.model, batches, adapter.family.name, group) if cfg.mope_cache else None
    cache = ScoreCache(cfg.mope_cache, base)
    z = Z(adapter, batches)
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
        if n_drop == 0 and cfg.mope_depth_share > 0:  # asked for, but too few layers for a whole one
            log.warning("warning: --depth-share %s removes no layer of the %s (%s x %s x %d layers rounds to 0): "
                        "width takes the whole ratio", cfg.mope_depth_share, tower.replace("_model", " tower"),
                        cfg.mope_depth_share, cfg.ratio, n_layers)
        keep_frac[tower] = (1 - cfg.ratio) * n_layers / (n_layers - n_drop)
        if keep_frac[tower] > 1:
            raise UserError(f"--depth-share {cfg.mope_depth_share} removes more than --ratio {cfg.ratio} by itself")
        depth_plan[tower] = (n_layers, n_drop)
        for i, layer in enumerate(_layers(adapter, tower)):  # what the width plan refuses, before any scoring
            attn, inter = layer.self_attn, layer.mlp.fc1.out_features
            width_plan(attn.q_proj.out_features // st.head_dim(attn), inter, group, keep_frac[tower],
                       f"{tower} layer {i}")
            _check_group(group, inter, keep_frac[tower], cfg.ratio, tower.replace("_model", " tower"))

    # width: MoPE of every head and neuron group, uniform target width per layer
    width_scores: dict[str, dict] = {}  # layer -> errors of its heads and neuron groups, heads kept
    total = sum(l.self_attn.q_proj.out_features // st.head_dim(l.self_attn) + math.ceil(l.mlp.fc1.out_features / group)
                for t in st.TOWER_ATTRS for l in _layers(adapter, t))
    advance = ctx.reporter.task("MoPE width (heads, neurons)", total=total)
    replayed: dict[str, bool] = {}  # towers scored by replay (False: some of it by full forwards)
    decisions: dict[str, list[dict]] = {}  # tower -> per layer, the heads and neuron groups kept
    screens: dict[str, dict] = {}  # tower -> what screening screened and scored again
    for tower in st.TOWER_ATTRS:
        modality = "vision" if tower == "vision_model" else "text"
        replay = z.replay(tower, FAST_SCORING)
        screen = Screen(adapter.model, SCREEN if FAST_SCORING else False, z.base)
        earlier: list[dict] = []  # what the layers before kept: the errors of the next depend on it
        for i, layer in enumerate(_layers(adapter, tower)):
            attn, mlp = layer.self_attn, layer.mlp
            n_heads = attn.q_proj.out_features // st.head_dim(attn)
            inter = mlp.fc1.out_features
            heads_keep, groups_keep = width_plan(n_heads, inter, group, keep_frac[tower], f"{tower} layer {i}")
            starts = list(range(0, inter, group))
            if (heads_keep, groups_keep) == (n_heads, len(starts)):  # it keeps every module: no error can matter
                advance(n_heads + len(starts))
                width_scores[f"{tower}.encoder.layers.{i}"] = {"kept_heads": list(range(n_heads)), "kept_all": True}
                earlier = [*earlier, {"heads": list(range(n_heads)), "neuron_groups": list(range(len(starts)))}]
                continue
            parts = {"scores": "width", "tower": tower, "layer": i, "earlier": earlier}
            errors = cache.get("width_layers", parts, {"heads": n_heads, "neuron_groups": len(starts)})
            scored, rescored = errors is None, screen.rescored
            if errors is None:
                errors = width_errors(z, replay, screen, modality, i, layer, group, advance)
            else:
                advance(n_heads + len(starts))
            choice = LayerChoice(z, replay, screen, modality, i, layer, group)
            top_heads = choice.choose(errors, "heads", heads_keep)
            top_groups = choice.choose(errors, "neuron_groups", groups_keep)
            if scored or screen.rescored > rescored:  # new errors, or exact values for screened ones
                cache.put(parts, errors)
            neurons = torch.cat([torch.arange(starts[g], min(starts[g] + group, inter)) for g in top_groups])
            st.prune_heads(attn, top_heads)
            st.prune_neurons(mlp, neurons)
            width_scores[f"{tower}.encoder.layers.{i}"] = {**errors, "kept_heads": top_heads}
            earlier = [*earlier, {"heads": top_heads, "neuron_groups": top_groups}]
        decisions[tower] = earlier
        replayed[tower] = replay.replayed
        screens[tower] = screen.record()
    timings["width_s"] = time.perf_counter() - t0

    # depth: MoPE of each (width-pruned) layer, drop the lowest
    t0 = time.perf_counter()
    z.refresh()
    depth_scores = {}
    final_kept = {}
    for tower in st.TOWER_ATTRS:
        modality = "vision" if tower == "vision_model" else "text"
        n_layers, n_drop = depth_plan[tower]
        parts = {"scores": "depth", "tower": tower, "width": decisions}
        cached = cache.get("depth_towers", parts, {"layers": n_layers})
        if cached is None:
            replay = z.replay(tower, FAST_SCORING)
            errs = _depth_errors(z, replay, modality, _layers(adapter, tower))
            replayed[tower] = replayed[tower] and replay.replayed
            cache.put(parts, {"layers": errs})
        else:
            errs = cached["layers"]
        kept = reference_top_k(errs, n_layers - n_drop)
        st.keep_layers(adapter.model, tower, kept)
        final_kept[tower] = kept
        depth_scores[tower] = errs
    timings["depth_s"] = time.perf_counter() - t0

    after = prunable_counts(adapter)
    record.update({"neuron_group": group, "depth_share": cfg.mope_depth_share,
                   "mope_width": width_scores, "mope_depth": depth_scores, "z_replay": replayed,
                   "z_screen": screens})
    if cache.root is not None:
        record["mope_cache"] = cache.record()
    sparsity = {
        "overall": 1 - sum(after.values()) / sum(dense_prunable.values()),
        "per_modality": {k: 1 - after[k] / dense_prunable[k] for k in dense_prunable},
        "per_layer": per_block_sparsity(adapter, dense_blocks, final_kept),
        "prunable_weights": sum(dense_prunable.values()),
        "kind": "fraction of prunable parameters removed",
    }
    calibration = {"samples": n_pairs, "z_pairs": n_pairs}  # distillation records its own pairs
    return MethodResult(masks=None, timings=timings, calibration=calibration,
                        structure=st.describe(adapter.model, final_kept), sparsity=sparsity,
                        budget_by_role=budget_by_role_from_counts(dense_roles, role_counts(adapter)), extra=record)


def _depth_errors(z: Z, replay: Replay, modality: str, layers: Sequence[st.EncoderLayer]) -> list[float]:
    """MoPE of each whole (width-cut) layer: its out_proj and fc2 zeroed, which makes its block the identity."""
    errs = []
    for i, layer in enumerate(layers):
        a, m = layer.self_attn.out_proj, layer.mlp.fc2
        with replay.scoring(i, "layer") as r:
            errs.append(error_without(z, modality, [(a.weight, slice(None)), (a.bias, slice(None)),
                                                    (m.weight, slice(None)), (m.bias, slice(None))], r))
    return errs


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
