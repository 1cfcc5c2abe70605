"""The one prune record (prune.json, copied into build.json), built from any method's `MethodResult`."""

from __future__ import annotations

from mfdeploy._version import __version__
from mfdeploy.models.base import Adapter, PrunableLayer
from mfdeploy.pruning.masks import Masks, param_name, sparsity_report
from mfdeploy.pruning.result import MethodResult, MethodSpec, PruneContext

ROLES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _ordered(by_mod: dict[str, dict[str, list[int]]]) -> dict[str, dict[str, float]]:
    """modality -> role -> removed / total, roles in the usual order (unknown roles after, sorted)."""
    out = {}
    for modality, roles in by_mod.items():
        order = [r for r in ROLES if r in roles] + sorted(set(roles) - set(ROLES))
        out[modality] = {r: roles[r][0] / roles[r][1] for r in order if roles[r][1]}
    return out


def budget_by_role(masks: Masks, layers: dict[str, PrunableLayer]) -> dict[str, dict[str, float]]:
    """Per modality, per role: the sparsity of that role's layers (pruned weights / total weights).

    Args:
        masks: parameter name -> bool mask (True = keep) for every layer in `layers`.
        layers: the prunable layers, with their modality and role.
    """
    by_mod: dict[str, dict[str, list[int]]] = {}
    for name, layer in layers.items():
        mask = masks[param_name(name)]
        acc = by_mod.setdefault(layer.modality, {}).setdefault(layer.role, [0, 0])
        acc[0] += int((~mask).sum())
        acc[1] += mask.numel()
    return _ordered(by_mod)


def role_counts(adapter: Adapter) -> dict[str, dict[str, int]]:
    """modality -> role -> weights in the prunable layers (structured methods: count before and after)."""
    out: dict[str, dict[str, int]] = {}
    for layer in adapter.prunable_layers().values():
        roles = out.setdefault(layer.modality, {})
        roles[layer.role] = roles.get(layer.role, 0) + layer.module.weight.numel()
    return out


def budget_by_role_from_counts(dense: dict[str, dict[str, int]],
                               after: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Per modality, per role: the fraction of the dense weights that are gone (structured pruning)."""
    by_mod = {m: {r: [n - after.get(m, {}).get(r, 0), n] for r, n in roles.items()} for m, roles in dense.items()}
    return _ordered(by_mod)


def build_record(ctx: PruneContext, spec: MethodSpec, result: MethodResult) -> dict:
    """The prune record: what was asked, what each step did, and what it achieved.

    Private entries (`_masks`, `_structure`) carry the masks and structure to the
    writers; `record_for_json` drops them.
    """
    cfg = ctx.cfg
    report = result.sparsity if result.sparsity is not None else sparsity_report(result.masks or {}, ctx.layers)
    by_role = (result.budget_by_role if result.budget_by_role is not None
               else budget_by_role(result.masks or {}, ctx.layers))
    source = ctx.source
    record = {
        "model": ctx.adapter.model_id,
        "family": ctx.adapter.family.name,
        "method": cfg.method,
        "score": spec.score,
        "budget": ctx.budget,
        "ratio": cfg.ratio,
        "pattern": "structured" if result.masks is None else (cfg.pattern or "unstructured"),
        "seed": cfg.seed,
        "calibration": {"source": source.describe() if source else None, "samples": ctx.used,
                        "requested": cfg.calib_samples if source else 0,
                        # in-memory batches are used as the caller made them
                        "batch_size": (max(map(len, source.batches)) if source and source.kind == "memory"
                                       and source.batches else cfg.batch_size),
                        **result.calibration},
        "include": list(cfg.include), "exclude": list(cfg.exclude),
        "dense_layers": result.dense_layers,
        "sparsity": report,
        "budget_by_role": by_role,
        **result.extra,
        "timings": result.timings,
        "mfdeploy_version": __version__,
    }
    if result.masks is not None:
        record["_masks"] = result.masks
    if result.structure is not None:
        record["structure"] = record["_structure"] = result.structure
    return record


def record_for_json(record: dict) -> dict:
    """The record without its private (in-memory) entries."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def block_counts(adapter: Adapter) -> dict[str, tuple[str, int]]:
    """Prunable parameters per transformer block (model order)."""
    out: dict[str, tuple[str, int]] = {}
    for layer in adapter.prunable_layers().values():
        mod, n = out.get(layer.block, (layer.modality, 0))
        out[layer.block] = (mod, n + layer.module.weight.numel())
    return out


def per_block_sparsity(adapter: Adapter, dense: dict[str, tuple[str, int]], kept: dict[str, list[int]]) -> dict:
    """Fraction of each original block's prunable parameters removed (1.0 for dropped layers)."""
    now = block_counts(adapter)
    out = {}
    for block, (modality, n) in dense.items():
        tower, _, _, idx = block.split(".")
        position = kept[tower].index(int(idx)) if int(idx) in kept[tower] else None
        left = now[f"{tower}.encoder.layers.{position}"][1] if position is not None else 0
        out[block] = {"modality": modality, "sparsity": 1 - left / n, "numel": n}
    return out


def prunable_counts(adapter: Adapter) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer in adapter.prunable_layers().values():
        counts[layer.modality] = counts.get(layer.modality, 0) + layer.module.weight.numel()
    return counts


__all__ = ["ROLES", "block_counts", "budget_by_role", "build_record", "per_block_sparsity", "prunable_counts",
           "record_for_json"]
