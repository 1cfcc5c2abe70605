"""The CLIP family: Hugging Face `CLIPModel` (OpenAI CLIP, the bundled model, and fine-tunes of either).

Conventions: text padded to the longest text of a batch, with an attention
mask (causal text attention, EOS pooling); images resized and center-cropped
by the checkpoint's own `CLIPImageProcessor`. Pairs are scored with a softmax
over the texts of `exp(logit_scale) * cosine`, and trained with the symmetric
contrastive (InfoNCE) loss.

Prunable: the six linears of every encoder layer of both towers (q/k/v/out
projections, fc1, fc2). `visual_projection` and `text_projection` stay dense:
each maps one pooled token to the embedding, so pruning them saves almost no
compute while every embedding passes through them.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel

from mfdeploy.models.family import Family
from mfdeploy.models.hf import HFAdapter


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
        text_config: Any = model.config.text_config  # a CLIPTextConfig once built (typed as its constructor's input)
        self.eos_token_id = int(text_config.eos_token_id)

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


class ClipFamily(Family):
    """Softmax-contrastive dual encoders with an attention-masked, EOS-pooled text tower."""

    name = "clip"
    title = "CLIP"
    model_class = "CLIPModel"
    scoring = "softmax"
    text_padding = "longest"
    text_inputs = ("input_ids", "attention_mask")
    loss_name = "symmetric softmax contrastive loss (InfoNCE, image->text and text->image)"
    pooling = "vision: CLS token + visual_projection; text: end-of-text token + text_projection"
    head = ("visual_projection", "text_projection")

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return VisionTower(cast(CLIPModel, model))  # a family's adapter holds its own model class

    def text_tower(self, model: nn.Module) -> nn.Module:
        return TextTower(cast(CLIPModel, model))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)  # one distribution over the texts per image

    def loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
             same_image: torch.Tensor | None = None) -> torch.Tensor:
        if teacher_logits is None:
            if same_image is not None:  # out of both softmaxes: not a candidate of the image, nor its copy of the text
                logits = logits.masked_fill(same_image, float("-inf"))
            target = torch.arange(logits.shape[0], device=logits.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        # soft targets: the teacher's distribution over texts per image, and over images per text
        i2t = -(teacher_logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
        t2i = -(teacher_logits.t().softmax(1) * logits.t().log_softmax(1)).sum(1).mean()
        return 0.5 * (i2t + t2i)


CLIP = ClipFamily()


class CLIPAdapter(HFAdapter):
    """Hugging Face `CLIPModel` (OpenAI CLIP, the bundled model, and fine-tunes of either)."""

    family = CLIP

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)


__all__ = ["CLIP", "CLIPAdapter", "ClipFamily", "TextTower", "VisionTower"]
