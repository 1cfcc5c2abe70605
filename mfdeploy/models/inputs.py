"""Model inputs: image-caption pairs through a model's own processor and tokenizer, in batches.

`mfdeploy.data` yields raw pairs (PIL images and captions) and never sees a
model; this module turns them into the tensors a model takes. The
calibration-source names of `mfdeploy.data.batching` are re-exported, so a
caller that builds batches imports one module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
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
from mfdeploy.models.processors import token_counts

__all__ = ["Batch", "CalibSource", "calibration_pairs", "count_truncated", "make_batch", "pair_batches",
           "pairs_available", "parse_calib", "warn_truncated"]

log = logging.getLogger(__name__)  # with logging unconfigured (the CLI), a warning prints as one line on stderr
_warned: set[str] = set()  # calibration sources warned about: a method that reads its pairs twice warns once


@dataclass
class Batch:
    """Model inputs of a batch of image-caption pairs; text tokenized as the model's family does (`Adapter.tokenize`:
    CLIP pads to the longest caption, SigLIP to its fixed length with an all-ones mask)."""

    pixel_values: torch.Tensor  # [B,3,H,W] float32
    input_ids: torch.Tensor  # [B,L] int64
    attention_mask: torch.Tensor  # [B,L] int64, 0 = a position the model does not attend to (padding)

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
    truncated = total = 0
    for images, captions in raw_pair_chunks(source, n, batch_size, offset):
        truncated += count_truncated(adapter, captions)
        total += len(captions)
        yield make_batch(adapter, images, captions)
    warn_truncated(adapter, truncated, total, f"calibration captions of {source.describe()}", once=source.describe())


def count_truncated(adapter: Adapter, texts: Sequence[str]) -> int:
    """How many of `texts` are longer than the model's text length (tokenizing cuts them)."""
    return sum(n > adapter.max_text_len for n in token_counts(adapter.tokenizer, texts))


def warn_truncated(adapter: Adapter, truncated: int, total: int, what: str, once: str | None = None) -> None:
    """One warning line when `truncated` of `total` texts were cut at the model's text length.

    Args:
        adapter: the model (its text length).
        truncated, total: how many texts were cut, of how many.
        what: names the texts (e.g. "calibration captions of pairs.jsonl").
        once: warn only the first time for this key in the process (a calibration source that several
            passes of one method read: the first pass speaks for it).
    """
    if truncated <= 0 or (once is not None and once in _warned):
        return
    if once is not None:
        _warned.add(once)
    log.warning("warning: %d of %d %s are longer than the model's %d tokens: cut to their first tokens",
                truncated, total, what, adapter.max_text_len)
