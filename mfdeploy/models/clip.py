"""Adapter over a Hugging Face `CLIPModel` checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel

from mfdeploy.models.base import Adapter, PrunableLayer

PRUNABLE_ROLES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                  "mlp.fc1", "mlp.fc2")
TOWERS = {"vision": "vision_model", "text": "text_model"}


class VisionTower(nn.Module):
    """`pixel_values [B,3,H,W] -> image_embeds [B,D]`, L2-normalised."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output  # [B, W] (CLS after post-LN)
        return F.normalize(self.visual_projection(pooled), dim=-1)  # [B, D]


class TextTower(nn.Module):
    """`input_ids, attention_mask [B,L] int64 -> text_embeds [B,D]`, L2-normalised.

    Pools at the end-of-text token exactly as `CLIPTextModel` does, but with
    int32 arithmetic only: some runtimes reject ArgMax over int64.
    """

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection
        self.eos_token_id = int(model.config.text_config.eos_token_id)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B,L,W]
        ids = input_ids.to(torch.int32)
        if self.eos_token_id == 2:
            # legacy configs: the EOT token has the largest id (OpenAI vocabulary)
            eot = ids.argmax(dim=-1)
        else:
            eot = (ids == self.eos_token_id).to(torch.int32).argmax(dim=-1)  # first EOS
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot]  # [B, W]
        return F.normalize(self.text_projection(pooled), dim=-1)


class CLIPAdapter(Adapter):
    """Hugging Face `CLIPModel` (OpenAI CLIP, the bundled model, and fine-tunes of either)."""

    def __init__(self, model: CLIPModel, tokenizer, image_processor, source: str,
                 origin: dict[str, Any] | None = None, loaders: dict[str, Callable[[], Any]] | None = None):
        """Wrap a loaded model.

        Args:
            model: the `CLIPModel`.
            tokenizer: its tokenizer, or None to load it on first use through `loaders`.
            image_processor: its image processor, or None to load it on first use through `loaders`.
            source: the hub id or directory it came from.
            origin: what a pruned checkpoint was made from (`mfdeploy_origin.json`); None when dense.
            loaders: `{"tokenizer": fn, "image_processor": fn}`, called once when first needed.
        """
        self.model = model.eval()
        self._processors = {"tokenizer": tokenizer, "image_processor": image_processor}
        self._loaders = dict(loaders or {})
        self.source = source
        self.origin = origin

    def _processor(self, name: str) -> Any:
        if self._processors[name] is None and name in self._loaders:
            self._processors[name] = self._loaders.pop(name)()
        return self._processors[name]

    @property
    def tokenizer(self) -> Any:
        return self._processor("tokenizer")

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self._processors["tokenizer"] = value

    @property
    def image_processor(self) -> Any:
        return self._processor("image_processor")

    @image_processor.setter
    def image_processor(self, value: Any) -> None:
        self._processors["image_processor"] = value

    @property
    def model_id(self) -> str:
        name = getattr(self.model.config, "_name_or_path", "") or self.source
        return str(name)

    def vision_tower(self) -> nn.Module:
        return VisionTower(self.model).eval()

    def text_tower(self) -> nn.Module:
        return TextTower(self.model).eval()

    def _all_prunable(self) -> dict[str, PrunableLayer]:
        out: dict[str, PrunableLayer] = {}
        for modality, attr in TOWERS.items():
            tower = getattr(self.model, attr)
            for i, layer in enumerate(tower.encoder.layers):
                block = f"{attr}.encoder.layers.{i}"
                for role in PRUNABLE_ROLES:
                    module = layer.get_submodule(role)
                    assert isinstance(module, nn.Linear)
                    out[f"{block}.{role}"] = PrunableLayer(module, modality, block, role.split(".")[-1])
        return out

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def max_text_len(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def save(self, out: Path) -> None:
        out = Path(out)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)
