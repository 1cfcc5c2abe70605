"""A model family's conventions and its pair score: what differs between CLIP and SigLIP, in one place per family.

A `Family` says how text is tokenized for the model (padded to the longest
text with an attention mask, or padded to a fixed length with none), which
inputs each exported tower takes, how an image-text pair is scored
(`logits`, then `probabilities`), and the family's own training loss over a
batch of pairs (`loss`). Stages never ask which family a model is: they call
these through the adapter (`adapter.pair_loss`, `adapter.tokenize`, ...), or,
where only a checkpoint's files are at hand (the server),
through `mfdeploy.models.registry.family_of`.

The loss takes optional teacher logits: with them it is the loss against the
teacher's soft targets, so distillation's logits term is the same function
(`loss(student, teacher) - loss(teacher, teacher)`, a KL divergence that is 0
when the student scores pairs exactly as the teacher does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

SCORINGS = ("softmax", "sigmoid")
PADDINGS = ("longest", "max_length")


class Family(ABC):
    """A dual-encoder family: its input conventions, its towers, its pair score and its loss."""

    name: ClassVar[str]  # "clip", "siglip": recorded in prune.json, build.json, export.json and ONNX metadata
    title: ClassVar[str]  # for people: "CLIP", "SigLIP / SigLIP 2 at a fixed resolution"
    model_class: ClassVar[str]  # the transformers class its checkpoints load as
    scoring: ClassVar[str]  # "softmax": one distribution over the texts; "sigmoid": a probability per pair
    text_padding: ClassVar[str]  # "longest" (with an attention mask) or "max_length" (a fixed length)
    text_inputs: ClassVar[tuple[str, ...]]  # what the text tower takes, in order
    loss_name: ClassVar[str]  # what `loss` is, for records
    pooling: ClassVar[str]  # how each tower pools, for `mfdeploy info` and the docs
    head: ClassVar[tuple[str, ...]]  # modules after the last encoder layer: never pruned (see the adapter)

    @abstractmethod
    def vision_tower(self, model: nn.Module) -> nn.Module:
        """`pixel_values [B,3,H,W] float32 -> image_embeds [B,D]`, L2-normalised, over `model`'s own weights."""

    @abstractmethod
    def text_tower(self, model: nn.Module) -> nn.Module:
        """`input_ids [B,L] int64 (, attention_mask [B,L] int64) -> text_embeds [B,D]`, L2-normalised."""

    def tokenize(self, tokenizer: Any, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """`(input_ids, attention_mask)` int64 `[B, L]` numpy arrays, as the model reads them.

        "longest": padded to the longest text, the tokenizer's mask. "max_length": padded (and truncated)
        to `max_len`; the mask says which positions the model attends to, and a text tower that takes no
        mask attends to every one (padding included), so it is all ones and activation statistics count
        every token the model computes.
        """
        padding = "max_length" if self.text_padding == "max_length" else True
        enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_len, return_tensors="np")
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        if "attention_mask" not in self.text_inputs:
            return ids, np.ones_like(ids)
        return ids, np.asarray(enc["attention_mask"], dtype=np.int64)

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Pair logits `[B_img, B_txt]` -> the family's probabilities (softmax over texts, or per-pair sigmoids)."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
             same_image: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of pair logits `[B, B]` (pair i is image i with text i), or, given a teacher's
        logits, the same loss against the teacher's probabilities as soft targets.

        `same_image` (`[B, B]` bool, `Batch.same_image`): True where text j is another caption of image i (a JSONL
        caption list). Those entries are left out of the hard-target loss, neither positive nor negative: each pair
        is scored as in a batch holding its image once (a duplicated image row would otherwise be told that one
        caption is its match and another, equally true, is not). None: every pair has its own image."""

    def conventions(self) -> dict[str, Any]:
        """What records and ONNX metadata say about the family (JSON-able)."""
        return {"family": self.name, "scoring": self.scoring, "text_padding": self.text_padding,
                "text_inputs": list(self.text_inputs), "loss": self.loss_name}

    def text_convention(self, max_len: int) -> str:
        """One line: how text goes in, e.g. for `mfdeploy info`."""
        if self.text_padding == "max_length":
            return (f"padded to exactly {max_len} tokens, {' + '.join(self.text_inputs)} "
                    "(no attention mask: every position is attended)")
        return f"padded to the longest text (at most {max_len} tokens), {' + '.join(self.text_inputs)}"


@dataclass(frozen=True)
class PairScorer:
    """A family's pair score with one model's logit scale (and bias): the one place logits are made.

    Attributes:
        family: whose probabilities and loss.
        scale: `exp(logit_scale)`, a float32 tensor of one element (on the model's device).
        bias: SigLIP's `logit_bias` (float32, one element), or None.
    """

    family: Family
    scale: torch.Tensor
    bias: torch.Tensor | None = None

    @classmethod
    def of(cls, family: Family, model: nn.Module) -> PairScorer:
        """The scorer of a loaded model, from its `logit_scale` (and `logit_bias`), detached."""
        bias = getattr(model, "logit_bias", None)
        scale = cast(torch.Tensor, model.logit_scale)  # a parameter of every family's model
        return cls(family, scale.detach().float().exp(),
                   None if bias is None else bias.detach().float())

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """`[B_img, D], [B_txt, D]` L2-normalised -> `[B_img, B_txt]` float32 logits (scaled cosine + bias)."""
        cos = image_embeds.float() @ text_embeds.float().t()  # [B_img, B_txt]; float32 whatever the model runs in
        logits = self.scale.to(cos.device) * cos
        return logits if self.bias is None else logits + self.bias.to(cos.device)

    def loss(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
             teacher_logits: torch.Tensor | None = None, same_image: torch.Tensor | None = None) -> torch.Tensor:
        """The family's loss of matched pairs (see `Family.loss`)."""
        return self.family.loss(self.logits(image_embeds, text_embeds), teacher_logits, same_image)

    def probabilities(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """`[B_img, B_txt]` probabilities: for each image a softmax over the texts, or an independent sigmoid."""
        return self.family.probabilities(self.logits(image_embeds, text_embeds))


__all__ = ["PADDINGS", "SCORINGS", "Family", "PairScorer"]
