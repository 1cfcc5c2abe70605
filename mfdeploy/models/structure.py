"""Structured (width/depth) pruning of encoder layers: cut heads, neurons and whole layers, and rebuild on load.

The layers of every supported family (CLIP, SigLIP) share the layout used
here: `<tower>.encoder.layers[i]` with `self_attn.{q,k,v,out}_proj`
(`head_dim`, `num_heads`) and `mlp.fc1`/`fc2`. Heads stay whole (the pooling
heads after the encoders are never cut).

The pruned checkpoint stores, next to its weights, `mfdeploy_structure.json`:
for each tower the original indices of the layers kept and, per kept layer,
the number of attention heads and MLP neurons left. Loading builds the dense
architecture from `config.json`, cuts it to those shapes, then loads the
weights strictly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from mfdeploy.artifacts.layout import STRUCTURE_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedModel

TOWER_ATTRS = ("vision_model", "text_model")


class Attention(Protocol):
    """The attention of an encoder layer, as every supported family lays it out."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    out_proj: nn.Linear
    head_dim: int
    num_heads: int


class Mlp(Protocol):
    """The MLP of an encoder layer."""

    fc1: nn.Linear
    fc2: nn.Linear


class EncoderLayer(Protocol):
    """One transformer layer of a tower: `self_attn` and `mlp`."""

    self_attn: Attention
    mlp: Mlp


def encoder_layers(model: nn.Module, tower: str) -> Sequence[EncoderLayer]:
    """The transformer layers of `tower` ("vision_model" | "text_model"): `<tower>.encoder.layers`."""
    return getattr(model, tower).encoder.layers


def _linear(in_f: int, out_f: int, bias: bool, like: nn.Linear) -> nn.Linear:
    return nn.Linear(in_f, out_f, bias=bias, dtype=like.weight.dtype, device=like.weight.device)


@torch.no_grad()
def cut_rows(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A Linear with only the output features `keep` (rows of the weight)."""
    new = _linear(layer.in_features, len(keep), layer.bias is not None, layer)
    new.weight.copy_(layer.weight[keep])
    if layer.bias is not None:
        new.bias.copy_(layer.bias[keep])
    return new


@torch.no_grad()
def cut_cols(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A Linear with only the input features `keep` (columns of the weight); the bias is unchanged."""
    new = _linear(len(keep), layer.out_features, layer.bias is not None, layer)
    new.weight.copy_(layer.weight[:, keep])
    if layer.bias is not None:
        new.bias.copy_(layer.bias)
    return new


def head_dim(attn: Attention) -> int:
    return int(attn.head_dim)


def prune_heads(attn: Attention, keep_heads: Sequence[int]) -> None:
    """Keep only the listed attention heads: q/k/v rows and out_proj columns of the others are cut."""
    hd = head_dim(attn)
    idx = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in sorted(keep_heads)])
    attn.q_proj = cut_rows(attn.q_proj, idx)
    attn.k_proj = cut_rows(attn.k_proj, idx)
    attn.v_proj = cut_rows(attn.v_proj, idx)
    attn.out_proj = cut_cols(attn.out_proj, idx)
    attn.num_heads = len(keep_heads)


def prune_neurons(mlp: Mlp, keep: torch.Tensor) -> None:
    """Keep only the listed MLP neurons: fc1 rows and fc2 columns of the others are cut."""
    keep = torch.sort(keep).values
    mlp.fc1 = cut_rows(mlp.fc1, keep)
    mlp.fc2 = cut_cols(mlp.fc2, keep)


def keep_layers(model: nn.Module, tower: str, kept: Sequence[int]) -> None:
    """Drop whole transformer layers of a tower (original indices `kept` stay, in order)."""
    encoder = getattr(model, tower).encoder
    encoder.layers = nn.ModuleList([encoder.layers[i] for i in kept])
    # the transformers config: a plain attribute, which nn.Module's typing (params, buffers, submodules) misses
    config: Any = model.config
    sub = config.vision_config if tower == "vision_model" else config.text_config
    sub.num_hidden_layers = len(kept)


def describe(model: nn.Module, kept_layers: dict[str, list[int]]) -> dict:
    """The structure record of a (cut) model."""
    out = {}
    for tower in TOWER_ATTRS:
        layers = encoder_layers(model, tower)
        out[tower] = {
            "kept_layers": kept_layers[tower],
            "layers": [{"heads": int(l.self_attn.q_proj.out_features // head_dim(l.self_attn)),
                        "intermediate": int(l.mlp.fc1.out_features)} for l in layers],
        }
    return out


def apply_structure(model: nn.Module, structure: dict) -> None:
    """Cut a freshly built dense model to the recorded shapes (weights are loaded afterwards)."""
    for tower in TOWER_ATTRS:
        spec = structure[tower]
        keep_layers(model, tower, spec["kept_layers"])
        for layer, shape in zip(encoder_layers(model, tower), spec["layers"]):
            prune_heads(layer.self_attn, list(range(shape["heads"])))
            prune_neurons(layer.mlp, torch.arange(shape["intermediate"]))


def load_structured(path: Path, model_cls: type[PreTrainedModel]) -> PreTrainedModel:
    """Load a structurally pruned checkpoint directory as `model_cls` (its family's transformers class)."""
    from safetensors.torch import load_file

    path = Path(path)
    structure = json.loads((path / STRUCTURE_FILE).read_text())
    config_class = model_cls.config_class
    assert config_class is not None  # each family's model class names its config class
    config = config_class.from_pretrained(path)
    # the saved config holds the kept layer counts; rebuild the dense depth first, then cut
    for tower, sub in (("vision_model", config.vision_config), ("text_model", config.text_config)):
        sub.num_hidden_layers = max(structure[tower]["kept_layers"]) + 1
    model = model_cls(config)
    apply_structure(model, structure)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise OSError(f"{path}: no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    # assign: the weights in the dtype they were saved in (a tower's config may name another: a float16 checkpoint
    # pruned in float32 recorded float16 for its towers, which built them in float16 beside float32 projections)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"structured checkpoint does not match its structure file: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return model.eval()
