"""The SigLIP family: Hugging Face `SiglipModel` checkpoints, SigLIP (google/siglip-*) and the fixed-resolution
SigLIP 2 ones (google/siglip2-*-patchN-RES, which are `SiglipModel`s with a Gemma tokenizer).

What differs from CLIP (checked against transformers' `modeling_siglip.py`):

- Scoring: `exp(logit_scale) * cosine + logit_bias`, each pair through its own
  sigmoid (no softmax over the labels); training loss: the pairwise sigmoid
  loss, `-sum_j log sigmoid(z_ij * logit_ij)` averaged over images, z = +1 on
  the matched pair and -1 elsewhere.
- Text: padded to exactly `max_position_embeddings` tokens (64 for the released
  checkpoints, `padding="max_length"`), no attention mask (the model was trained
  attending to every position, padding included), pooled at the last position,
  then the `head` linear. The exported text tower takes `input_ids` alone, at
  that fixed length.
- Images: the checkpoint's `SiglipImageProcessor` resizes to the square input
  size, with no center crop, and normalises with mean = std = 0.5.
- Vision pooling: `vision_model.head`, a multi-head attention pooling head (a
  learned probe attends over all patch tokens, then LayerNorm and an MLP).

Prunable: the six linears of every encoder layer of both towers, named with
CLIP's roles (q_proj, k_proj, v_proj, out_proj, fc1, fc2), so `budget_by_role`
reads the same for both families. Both heads stay dense, as CLIP's projections
do: the text head and the pooling head's MLP and attention output run on one
token per image or text (pruning them saves almost nothing), every embedding
passes through them, and the pooling head's q/k/v live in one fused
`nn.MultiheadAttention.in_proj_weight`, which is not an `nn.Linear`.

The NaFlex SigLIP 2 checkpoints (`Siglip2Model`, model_type "siglip2": variable
patch counts with `pixel_attention_mask` and `spatial_shapes`) are refused when
loading (`registry.UNSUPPORTED`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from mfdeploy.errors import UserError
from mfdeploy.models.family import Family
from mfdeploy.models.hf import HFAdapter

if TYPE_CHECKING:
    from transformers import SiglipModel


class VisionTower(nn.Module):
    """`pixel_values [B,3,H,W] -> image_embeds [B,D]`, L2-normalised: the attention-pooling head's output."""

    def __init__(self, model: SiglipModel):
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output  # [B, D] (probe-attention pooled)
        return F.normalize(pooled, dim=-1)


class TextTower(nn.Module):
    """`input_ids [B,L] int64 -> text_embeds [B,D]`, L2-normalised: the last position through the text head.

    `attention_mask` is accepted, so the stages call every family's tower alike,
    and ignored: SigLIP attends to every position (see the module docstring).
    """

    def __init__(self, model: SiglipModel):
        super().__init__()
        self.text_model = model.text_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids).pooler_output  # [B, D]: head(last position)
        return F.normalize(pooled, dim=-1)


class SiglipFamily(Family):
    """Sigmoid-loss dual encoders with a fixed-length, unmasked text tower and an attention-pooling vision head."""

    name = "siglip"
    title = "SigLIP / SigLIP 2 at a fixed resolution"
    model_class = "SiglipModel"
    scoring = "sigmoid"
    text_padding = "max_length"
    text_inputs = ("input_ids",)
    loss_name = "pairwise sigmoid loss (logit_scale and logit_bias; matched pairs +1, all others -1)"
    pooling = ("vision: attention-pooling head (probe over all patches, LayerNorm, MLP); "
               "text: last position (padding included) + head linear")
    head = ("vision_model.head", "text_model.head")

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return VisionTower(cast("SiglipModel", model))  # a family's adapter holds its own model class

    def text_tower(self, model: nn.Module) -> nn.Module:
        return TextTower(cast("SiglipModel", model))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()  # each pair on its own: the probabilities of an image need not sum to 1

    def loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
             same_image: torch.Tensor | None = None) -> torch.Tensor:
        if teacher_logits is None:
            target = torch.eye(logits.shape[0], logits.shape[1], device=logits.device, dtype=logits.dtype)
        else:
            target = teacher_logits.sigmoid()
        # summed over the texts of an image, averaged over images: transformers' SiglipModel loss
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # [B_img, B_txt]
        if same_image is not None and teacher_logits is None:  # a true caption of the image: no negative
            bce = bce.masked_fill(same_image, 0.0)
        return bce.sum(dim=1).mean()


SIGLIP = SiglipFamily()


class SiglipAdapter(HFAdapter):
    """Hugging Face `SiglipModel`: SigLIP, and SigLIP 2 at a fixed resolution."""

    family = SIGLIP

    @classmethod
    def check_config(cls, config: dict, where: object) -> None:
        if (config.get("vision_config") or {}).get("vision_use_head") is False:
            raise UserError(f"{where}: a SigLIP vision tower without its pooling head (vision_use_head=false) "
                            "has no image embedding to export")

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.vision_config.hidden_size)  # == the text head's projection_size


__all__ = ["SIGLIP", "SiglipAdapter", "SiglipFamily", "TextTower", "VisionTower"]
