"""Model inputs: image-caption pairs through a model's own processor and tokenizer, in batches.

`mfdeploy.data` yields raw pairs (PIL images and captions) and never sees a
model; this module turns them into the tensors a model takes. The
calibration-source names of `mfdeploy.data.batching` are re-exported, so a
caller that builds batches imports one module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mfdeploy.data.batching import (
    CalibSource,
    calibration_pairs,
    pairs_available,
    parse_calib,
    raw_pair_chunks,
)
from mfdeploy.errors import UserError
from mfdeploy.models.base import Adapter

__all__ = ["Batch", "CalibSource", "calibration_pairs", "make_batch", "pair_batches", "pairs_available",
           "parse_calib"]


@dataclass
class Batch:
    """Model inputs of a batch of image-caption pairs; text padded to the longest caption."""

    pixel_values: torch.Tensor  # [B,3,H,W] float32
    input_ids: torch.Tensor  # [B,L] int64
    attention_mask: torch.Tensor  # [B,L] int64, 0 = padding

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])


def make_batch(adapter: Adapter, images: list, captions: list[str]) -> Batch:
    """Preprocess with the model's own processor and tokenizer."""
    ids, mask = adapter.tokenize(captions)
    return Batch(adapter.pixel_values(images), ids, mask)


def pair_batches(adapter: Adapter, source: CalibSource, n: int, batch_size: int,
                 offset: int = 0) -> Iterator[Batch]:
    """`n` calibration pairs from `source` in batches of `batch_size`, as model inputs.

    The shapes world yields its calibration seeds in order (deterministic); a
    JSONL file yields its first `n` pairs (all of them when it has fewer);
    in-memory batches are yielded as they are.
    """
    if n <= 0 or batch_size <= 0:
        raise UserError("calibration sample count and batch size must be positive")
    if source.kind == "memory":  # already model inputs
        yield from source.batches
        return
    for images, captions in raw_pair_chunks(source, n, batch_size, offset):
        yield make_batch(adapter, images, captions)
