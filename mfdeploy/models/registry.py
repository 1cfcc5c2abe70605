"""Which adapter loads a checkpoint: looked up by its config's `model_type` in one dict.

A family is added by writing its adapter (and `Family`) and one entry here;
nothing else in mfdeploy names a family. A model type that looks supported
but is not (SigLIP 2's NaFlex variant) is refused in one line that names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from mfdeploy.errors import UserError
from mfdeploy.models.clip import CLIPAdapter
from mfdeploy.models.family import Family
from mfdeploy.models.hf import HFAdapter
from mfdeploy.models.siglip import SiglipAdapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# config.json's model_type -> the adapter of its family
ADAPTERS: dict[str, type[HFAdapter]] = {"clip": CLIPAdapter, "siglip": SiglipAdapter}
# model types refused with a reason (variants of a supported family that the towers' contract cannot hold)
UNSUPPORTED = {
    "siglip2": ("a SigLIP 2 NaFlex checkpoint (model_type 'siglip2', Siglip2Model): its vision tower takes "
                "patch sequences of variable length with pixel_attention_mask and spatial_shapes, which mfdeploy "
                "does not export; use a fixed-resolution SigLIP 2 checkpoint instead (e.g. "
                "google/siglip2-base-patch16-224, model_type 'siglip')"),
}
FAMILIES: dict[str, Family] = {cls.family.name: cls.family for cls in ADAPTERS.values()}


def supported() -> str:
    """`'clip' (CLIP), 'siglip' (SigLIP / SigLIP 2 ...)`: for messages."""
    return ", ".join(f"{t!r} ({cls.family.title})" for t, cls in ADAPTERS.items())


def adapter_class(config: dict[str, Any], where: object) -> type[HFAdapter]:
    """The adapter for a checkpoint's config (a dict read from config.json).

    Raises:
        UserError: an unknown or refused model type, or a config the family cannot serve.
    """
    model_type = config.get("model_type")
    if model_type in UNSUPPORTED:
        raise UserError(f"{where}: {UNSUPPORTED[model_type]}")
    if model_type not in ADAPTERS:
        raise UserError(f"{where}: not a supported dual-encoder checkpoint (model_type={model_type!r}; "
                        f"supported: {supported()})")
    adapter = ADAPTERS[model_type]
    adapter.check_config(config, where)
    return adapter


def read_config(checkpoint: Path) -> dict[str, Any]:
    """A local checkpoint's config.json as a dict.

    Raises:
        UserError: no config.json, or one that is not readable JSON.
    """
    path = Path(checkpoint) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{checkpoint}: not a model checkpoint (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a JSON object")
    return config


def family_of(checkpoint: Path) -> Family:
    """The family of a local checkpoint directory, from its config.json alone (no weights loaded)."""
    return adapter_class(read_config(checkpoint), checkpoint).family


def adapter_for_model(model: nn.Module) -> type[HFAdapter]:
    """The adapter class of a loaded transformers model (e.g. the Python API's in-memory `SiglipModel`).

    Raises:
        UserError: not an instance of a supported family's model class.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type) if isinstance(model_type, str) else None
    if adapter is None or not isinstance(model, model_class(adapter)):
        names = ", ".join(cls.family.model_class for cls in ADAPTERS.values())
        raise UserError(f"expected a transformers {names} or a mfdeploy adapter, got {type(model).__name__}")
    return adapter


def family_of_model(model: nn.Module) -> Family:
    """The family of a loaded transformers model (its `config.model_type`)."""
    return adapter_for_model(model).family


def model_class(adapter: type[HFAdapter]) -> type[PreTrainedModel]:
    """The transformers model class a family's checkpoints load as (imported on use)."""
    import transformers

    return getattr(transformers, adapter.family.model_class)


__all__ = ["ADAPTERS", "FAMILIES", "UNSUPPORTED", "adapter_class", "adapter_for_model", "family_of",
           "family_of_model", "model_class", "read_config", "supported"]


def scoring_constants(checkpoint: Path) -> tuple[float, float | None]:
    """`(exp(logit_scale), logit_bias)` of a local checkpoint, read from its safetensors files without loading
    the model (the bias None for a family without one). A checkpoint without `logit_scale` has the config's
    initial value, as transformers would give it."""
    import numpy as np
    from safetensors import safe_open

    found: dict[str, float] = {}
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            for name in {"logit_scale", "logit_bias"} & set(f.keys()):
                found[name] = float(np.asarray(f.get_tensor(name), dtype=np.float64).reshape(-1)[0])
    scale = found.get("logit_scale", float(read_config(checkpoint).get("logit_scale_init_value", 2.6592)))
    return float(np.exp(scale)), found.get("logit_bias")

