"""The adapter interface: what the stages need to know about a dual-encoder model.

Stages (prune, export, serve, eval) only talk to an `Adapter`, so a family
(CLIP in `clip.py`, SigLIP in `siglip.py`) is added by implementing this
class and its `Family` (`family.py`) and registering it in `registry.py`,
without touching them.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from mfdeploy.data.images import DEFAULT_MAX_PIXELS, ImageTooLarge, to_rgb
from mfdeploy.errors import UserError
from mfdeploy.models.family import Family, PairScorer
from mfdeploy.models.processors import grown_too_large, resized_pixels

MODALITIES = ("vision", "text")
ORIGIN_ATTR = "_mfdeploy_origin"  # on a module mfdeploy pruned in memory: its origin, for any adapter over it


@dataclass(frozen=True)
class PrunableLayer:
    """A prunable linear layer: its module, modality, transformer block and role."""

    module: nn.Linear
    modality: str  # "vision" | "text" (| "fusion")
    block: str  # qualified name of the transformer layer that holds it
    role: str  # q_proj, k_proj, v_proj, out_proj, fc1, fc2


class Adapter(ABC):
    """A loaded dual-encoder checkpoint and everything the stages need from it."""

    family: ClassVar[Family]  # conventions, pair score and loss of the model's family
    model: nn.Module
    source: str  # hub id or local path it came from
    tokenizer: Any
    image_processor: Any

    @property
    def origin(self) -> dict[str, Any] | None:
        """How the model was pruned (a pruned checkpoint's mfdeploy_origin.json, or what `prune_model` did to it in
        memory); None when dense. Kept on the module, so every adapter over the same model sees it (the Python
        API wraps a `CLIPModel` afresh on each call)."""
        return getattr(self.model, ORIGIN_ATTR, None)

    @origin.setter
    def origin(self, value: dict[str, Any] | None) -> None:
        self.model.__dict__[ORIGIN_ATTR] = value  # a plain attribute: nn.Module keeps no state_dict entry for it

    @property
    def pruned_label(self) -> str | None:
        """What a pruned model is, e.g. `multiflow 0.5 unstructured from mfdeploy/clip-shapes`; None when dense."""
        if not self.origin:
            return None
        o = self.origin
        return (f"{o.get('method', '?')} {o.get('ratio', '?')} {o.get('pattern') or 'unstructured'} "
                f"from {o.get('model_id', '?')}")

    @property
    @abstractmethod
    def model_id(self) -> str:
        """A stable identifier (hub id, or directory name) recorded in masks and manifests."""

    @abstractmethod
    def vision_tower(self) -> nn.Module:
        """`pixel_values [B,3,H,W] float32 -> image_embeds [B,D]`, L2-normalised."""

    @abstractmethod
    def text_tower(self) -> nn.Module:
        """`input_ids [B,L] int64, attention_mask [B,L] int64 -> text_embeds [B,D]`, L2-normalised.

        A family whose text tower takes no mask (`family.text_inputs`) accepts it and ignores it.
        """

    @abstractmethod
    def tower_module(self, modality: str) -> nn.Module:
        """The model's whole tower of `modality` ("vision" or "text"), for parameter counts."""

    @abstractmethod
    def _all_prunable(self) -> dict[str, PrunableLayer]:
        """Every prunable layer by qualified module name, in model order."""

    @property
    @abstractmethod
    def image_size(self) -> int: ...

    @property
    @abstractmethod
    def max_text_len(self) -> int: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def embed_dim(self) -> int: ...

    @abstractmethod
    def save(self, out: Path) -> None:
        """Write a self-contained checkpoint directory (weights, config, tokenizer, processor)."""

    def prunable_layers(
        self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
    ) -> dict[str, PrunableLayer]:
        """Prunable layers by qualified name, filtered with fnmatch globs.

        Args:
            include: keep only names matching one of these globs (default: all).
            exclude: then drop names matching any of these globs.
        """
        layers = self._all_prunable()
        if include:
            layers = {n: v for n, v in layers.items() if any(fnmatch.fnmatchcase(n, g) for g in include)}
        if exclude:
            layers = {n: v for n, v in layers.items() if not any(fnmatch.fnmatchcase(n, g) for g in exclude)}
        return layers

    def pixel_values(self, images: Iterable[Image.Image]) -> torch.Tensor:
        """Preprocess images with the model's own image processor -> `[B,3,H,W]` float32.

        Every image is first made RGB by `mfdeploy.data.images.to_rgb` (16-bit, float, transparent,
        EXIF-rotated and animated images decoded right), whatever handed it in.
        """
        images = list(images)
        for im in images:  # a long thin image grows to gigabytes in a shortest-edge resize: refused first
            grown = resized_pixels(self.image_processor, im.width, im.height)
            if grown > DEFAULT_MAX_PIXELS:
                name = getattr(im, "filename", "")  # set on an image opened from a file
                where = f"{name}: " if name else ""
                raise ImageTooLarge(f"{where}{grown_too_large(im.width, im.height, grown, DEFAULT_MAX_PIXELS)}: "
                                    "crop it nearer to a square", grown, DEFAULT_MAX_PIXELS)
        out = self.image_processor(images=[to_rgb(im) for im in images], return_tensors="pt")
        pixels = out["pixel_values"].float()  # [B, 3, H, W]
        if tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
            raise UserError(self.processor_mismatch(tuple(pixels.shape[-2:])))
        return pixels

    def processor_mismatch(self, made: tuple[int, ...]) -> str:
        """The refusal of an image processor whose pictures (`made`, H x W) are not the size the model takes."""
        return (f"{self.source}: the image processor makes {made[0]}x{made[1]} pictures but the model takes "
                f"{self.image_size}x{self.image_size} (vision_config.image_size): use the image processor saved "
                "with this model (its preprocessor_config.json), not another model's")

    def check_image_processor(self) -> None:
        """Refuse, in one line, an image processor that does not make pictures of the model's size (transformers'
        vision embeddings raise on the first batch, after a build has evaluated and exported the dense model)."""
        self.pixel_values([Image.new("RGB", (self.image_size, self.image_size))])

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize as the family does -> `(input_ids, attention_mask)` int64 `[B,L]`.

        CLIP pads to the longest text of the batch; SigLIP pads to `max_text_len`
        and attends to every position (its mask is all ones), see `Family.tokenize`.
        """
        ids, mask = self.family.tokenize(self.tokenizer, texts, self.max_text_len)
        if ids.size and int(ids.max()) >= self.vocab_size:  # the embedding lookup's IndexError, named
            raise UserError(f"{self.source}: the tokenizer gives token id {int(ids.max())}, outside the model's "
                            f"vocabulary of {self.vocab_size} (text_config.vocab_size): use the tokenizer saved "
                            "with this model, not another model's")
        return torch.from_numpy(ids), torch.from_numpy(mask)

    @property
    def tower_inputs(self) -> dict[str, tuple[str, ...]]:
        """The inputs each exported tower takes, in order (the artifact contract of the family)."""
        return {"vision": ("pixel_values",), "text": tuple(self.family.text_inputs)}

    @property
    def fixed_text_len(self) -> int | None:
        """The one text length the model reads (a family padding to `max_text_len`), else None (any length)."""
        return self.max_text_len if self.family.text_padding == "max_length" else None

    def pair_scorer(self) -> PairScorer:
        """The family's pair score with this model's logit scale (and bias), detached."""
        return PairScorer.of(self.family, self.model)

    def pair_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """`[B_img, B_txt]` float32 logits of L2-normalised embeddings, as the model scores pairs."""
        return self.pair_scorer().logits(image_embeds, text_embeds)

    def pair_loss(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                  teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The family's training loss of matched pairs (CLIP: symmetric softmax cross-entropy; SigLIP: sigmoid)."""
        return self.pair_scorer().loss(image_embeds, text_embeds, teacher_logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Pair logits -> probabilities: softmax over the texts (CLIP) or independent sigmoids (SigLIP)."""
        return self.family.probabilities(logits)

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, prunable weights per modality."""
        counts = {"total": sum(p.numel() for p in self.model.parameters())}
        for layer in self._all_prunable().values():
            key = f"prunable_{layer.modality}"
            counts[key] = counts.get(key, 0) + layer.module.weight.numel()
        return counts
