"""Masks: compute from scores and budgets, apply (fold into weights), save and load with validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from mfdeploy._version import __version__
from mfdeploy.errors import UserError, first_line
from mfdeploy.models.base import Adapter, PrunableLayer
from mfdeploy.pruning.budgets import layer_budgets
from mfdeploy.pruning.criteria import SCORES
from mfdeploy.pruning.patterns import mask_layer, mask_nm, mask_rows_k, nm_eligible

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor shaped like the weight, True = keep


def param_name(layer_name: str) -> str:
    return f"{layer_name}.weight"


def compute_masks(
    layers: dict[str, PrunableLayer],
    score: str,
    sparsity: float,
    budget: str | None = "uniform",
    pattern: tuple[int, int] | None = None,
    act_norms: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    fold: bool = False,
) -> tuple[Masks, dict]:
    """Masks for every prunable layer, plus what was done (budget, dense-left layers).

    Args:
        layers: prunable layers by qualified module name.
        score: a key of `SCORES` (random, magnitude, wanda, multiflow).
        sparsity: fraction of prunable weights to zero (0.5 for N:M 2:4).
        budget: layer budget, "uniform" | "global" | "modality" (ignored with a pattern, which fixes
            every layer). A "row" score (wanda) keeps its row-wise comparison at the layer's budget.
        pattern: (n, m) for N:M semi-structured masks, None for unstructured.
        act_norms: `a_j` per layer (required by wanda and multiflow).
        seed: seeds the random criterion (a CPU generator: the same masks on every device).
        progress: called with each layer name after it is scored.
        fold: fold each mask into its weight (`weight *= mask`) as soon as it is computed. Layer
            by layer, one layer's scores are alive at a time; budgets are computed first, from the
            dense weights, and a layer's score reads only its own weight, so folding early changes
            no mask.
    """
    spec = SCORES[score]
    if spec.needs_activations and act_norms is None:
        raise ValueError(f"{score} needs activation statistics")
    budgets = None if pattern else layer_budgets(layers, sparsity, budget or "uniform")
    gen = torch.Generator().manual_seed(seed)
    masks: Masks = {}
    dense_left: list[str] = []
    for name, layer in layers.items():
        w = layer.module.weight
        scores = spec.fn(w, act_norms[name] if act_norms is not None else None, gen)  # [out, in]
        if pattern:
            n, m = pattern
            if nm_eligible(w.shape[1], m):
                mask = mask_nm(scores, n, m)
            else:
                mask = torch.ones_like(w, dtype=torch.bool)
                dense_left.append(name)
        else:
            assert budgets is not None
            mask = (mask_rows_k if spec.compare == "row" else mask_layer)(scores, budgets[name])
        del scores  # before the next layer's: one layer's scores alive at a time
        if fold:
            with torch.no_grad():
                w.mul_(mask)
        masks[param_name(name)] = mask
        if progress is not None:
            progress(name)
    info = {"budget": None if pattern else (budget or "uniform"), "dense_layers": dense_left}
    return masks, info


@torch.no_grad()
def apply_masks(model: torch.nn.Module, masks: Masks) -> None:
    """Fold masks into the weights: `weight *= mask`. Other parameters are untouched."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        _check_mask(name, mask, p)
        p.mul_(mask)  # bool promotes to 1/0 in p's dtype, without a weight-sized copy of the mask


def _check_mask(name: str, mask: torch.Tensor, param: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise UserError(f"mask {name}: dtype {mask.dtype}, expected bool")
    if tuple(mask.shape) != tuple(param.shape):
        raise UserError(f"mask {name}: shape {tuple(mask.shape)} does not match the model's {tuple(param.shape)}"
                        " (masks for a different model?)")


def sparsity_report(masks: Masks, layers: dict[str, PrunableLayer]) -> dict:
    """Overall, per-modality and per-layer sparsity (fraction of zeros in the masks)."""
    per_layer: dict[str, dict] = {}
    by_mod: dict[str, list[int]] = {}  # modality -> [zeros, weights]
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


META_KEY = "mfdeploy"  # the header's one metadata entry: the others, as sorted JSON (`save_masks`)


def save_masks(path: Path, masks: Masks, metadata: dict) -> None:
    """Write `masks.safetensors`; metadata (method, ratio, pattern, model id, version) in the header.

    The metadata goes in as one entry (`META_KEY`), its fields as JSON with sorted keys: safetensors writes a
    header's metadata in a hash map's order, which changes from process to process, so several entries made the
    same masks a different file on every run (the same seed must give the same bytes)."""
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()}
    meta["mfdeploy_version"] = __version__
    save_file({k: v.contiguous().cpu() for k, v in masks.items()}, str(path),  # a file: host memory
              metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def load_masks(path: Path, adapter: Adapter | None = None) -> tuple[Masks, dict]:
    """Read a masks file; with an adapter, check every name, shape and dtype against its model."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: masks file does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        if set(metadata) == {META_KEY}:  # one entry (`save_masks`); files written before it hold the fields
            metadata = json.loads(metadata[META_KEY])
            if not isinstance(metadata, dict):
                raise ValueError(f"its {META_KEY!r} header entry is not a JSON object")
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
