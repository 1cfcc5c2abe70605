"""The adapter interface: what the stages need to know about a dual-encoder model.

Stages (prune, export, serve, eval) only talk to an `Adapter`, so a SigLIP or
open_clip adapter can be added by implementing this class, without touching
them.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

MODALITIES = ("vision", "text")


@dataclass(frozen=True)
class PrunableLayer:
    """A prunable linear layer: its module, modality, transformer block and role."""

    module: nn.Linear
    modality: str  # "vision" | "text" (| "fusion")
    block: str  # qualified name of the transformer layer that holds it
    role: str  # q_proj, k_proj, v_proj, out_proj, fc1, fc2


class Adapter(ABC):
    """A loaded dual-encoder checkpoint and everything the stages need from it."""

    model: nn.Module
    source: str  # hub id or local path it came from
    tokenizer: Any
    image_processor: Any
    origin: dict[str, Any] | None = None  # a pruned checkpoint's mfdeploy_origin.json; None when dense

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
        """`input_ids [B,L] int64, attention_mask [B,L] int64 -> text_embeds [B,D]`, L2-normalised."""

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
        """Preprocess images with the model's own image processor -> `[B,3,H,W]` float32."""
        out = self.image_processor(images=list(images), return_tensors="pt")
        return out["pixel_values"].float()

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize, pad to the longest text of the batch -> `(input_ids, attention_mask)` int64 `[B,L]`."""
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, prunable weights per modality."""
        counts = {"total": sum(p.numel() for p in self.model.parameters())}
        for layer in self._all_prunable().values():
            key = f"prunable_{layer.modality}"
            counts[key] = counts.get(key, 0) + layer.module.weight.numel()
        return counts
