"""Masks: compute from scores and budgets, apply (fold into weights), save and load with validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from mfdeploy import __version__
from mfdeploy.errors import UserError, first_line
from mfdeploy.models.base import Adapter, PrunableLayer
from mfdeploy.prune.budgets import layer_budgets
from mfdeploy.prune.criteria import METHODS
from mfdeploy.prune.patterns import mask_layer, mask_nm, mask_rows, nm_eligible

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor shaped like the weight, True = keep


def param_name(layer_name: str) -> str:
    return f"{layer_name}.weight"


def compute_masks(
    layers: dict[str, PrunableLayer],
    method: str,
    sparsity: float,
    scope: str | None = None,
    pattern: tuple[int, int] | None = None,
    act_norms: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[Masks, dict]:
    """Masks for every prunable layer, plus what was done (budgets, dense-left layers).

    Args:
        layers: prunable layers by qualified module name.
        method: a key of `METHODS` (random, magnitude, wanda, multiflow).
        sparsity: fraction of prunable weights to zero (0.5 for N:M 2:4).
        scope: layer budget scope; default the method's own.
        pattern: (n, m) for N:M semi-structured masks, None for unstructured.
        act_norms: `a_j` per layer (required by wanda and multiflow).
        seed: seeds the random criterion.
        progress: called with each layer name after it is scored.
    """
    spec = METHODS[method]
    scope = scope or spec.default_scope
    if spec.needs_activations and act_norms is None:
        raise ValueError(f"{method} needs activation statistics")
    budgets = None if pattern else layer_budgets(layers, sparsity, scope)
    gen = torch.Generator().manual_seed(seed)
    masks: Masks = {}
    dense_left: list[str] = []
    for name, layer in layers.items():
        w = layer.module.weight
        scores = spec.score(w, act_norms[name] if act_norms is not None else None, gen)  # [out, in]
        if pattern:
            n, m = pattern
            if nm_eligible(w.shape[1], m):
                mask = mask_nm(scores, n, m)
            else:
                mask = torch.ones_like(w, dtype=torch.bool)
                dense_left.append(name)
        elif spec.compare == "row":
            mask = mask_rows(scores, sparsity)
        else:
            assert budgets is not None
            mask = mask_layer(scores, budgets[name])
        masks[param_name(name)] = mask
        if progress is not None:
            progress(name)
    info = {"scope": None if pattern else scope, "dense_layers": dense_left}
    return masks, info


@torch.no_grad()
def apply_masks(model: torch.nn.Module, masks: Masks) -> None:
    """Fold masks into the weights: `weight *= mask`. Other parameters are untouched."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        _check_mask(name, mask, p)
        p.mul_(mask.to(p.dtype))


def _check_mask(name: str, mask: torch.Tensor, param: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise UserError(f"mask {name}: dtype {mask.dtype}, expected bool")
    if tuple(mask.shape) != tuple(param.shape):
        raise UserError(f"mask {name}: shape {tuple(mask.shape)} does not match the model's {tuple(param.shape)}"
                        " (masks for a different model?)")


def sparsity_report(masks: Masks, layers: dict[str, PrunableLayer]) -> dict:
    """Overall, per-modality and per-layer sparsity (fraction of zeros in the masks)."""
    per_layer, by_mod = {}, {}
    total = zeros = 0
    for name, layer in layers.items():
        m = masks[param_name(name)]
        z, n = int((~m).sum()), m.numel()
        per_layer[name] = {"modality": layer.modality, "sparsity": z / n, "numel": n}
        acc = by_mod.setdefault(layer.modality, [0, 0])
        acc[0] += z
        acc[1] += n
        zeros += z
        total += n
    return {
        "overall": zeros / total if total else 0.0,
        "per_modality": {k: v[0] / v[1] for k, v in by_mod.items()},
        "per_layer": per_layer,
        "prunable_weights": total,
    }


def save_masks(path: Path, masks: Masks, metadata: dict) -> None:
    """Write `masks.safetensors`; metadata (method, ratio, pattern, model id, version) in the header."""
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()}
    meta["mfdeploy_version"] = __version__
    save_file({k: v.contiguous() for k, v in masks.items()}, str(path), metadata=meta)


def load_masks(path: Path, adapter: Adapter | None = None) -> tuple[Masks, dict]:
    """Read a masks file; with an adapter, check every name, shape and dtype against its model."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: masks file does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        masks = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a valid masks file ({first_line(e)})") from None
    if adapter is not None:
        params = dict(adapter.model.named_parameters())
        for name, mask in masks.items():
            if name not in params:
                raise UserError(f"{path}: mask for {name}, which the model does not have "
                                "(masks for a different model?)")
            _check_mask(name, mask, params[name])
    return masks, metadata
