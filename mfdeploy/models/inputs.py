"""Model inputs: image-caption pairs through a model's own processor and tokenizer, in batches.

`mfdeploy.data` yields raw pairs (PIL images and captions) and never sees a
model; this module turns them into the tensors a model takes. The
calibration-source names of `mfdeploy.data.batching` are re-exported, so a
caller that builds batches imports one module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mfdeploy.data.batching import (
    CalibSource,
    calibration_pairs,
    pairs_available,
    parse_calib,
    raw_pair_chunks,
)
from mfdeploy.errors import UserError, is_whole
from mfdeploy.models.base import Adapter
from mfdeploy.models.processors import token_counts

__all__ = ["Batch", "CalibSource", "calib_from_python", "calibration_pairs", "check_batch", "count_truncated",
           "make_batch", "pair_batches", "pairs_available", "parse_calib", "warn_truncated"]

log = logging.getLogger(__name__)  # with logging unconfigured (the CLI), a warning prints as one line on stderr
_warned: set[str] = set()  # calibration sources warned about: a method that reads its pairs twice warns once


@dataclass
class Batch:
    """Model inputs of a batch of image-caption pairs; text tokenized as the model's family does (`Adapter.tokenize`:
    CLIP pads to the longest caption, SigLIP to its fixed length with an all-ones mask)."""

    pixel_values: torch.Tensor  # [B,3,H,W] float32
    input_ids: torch.Tensor  # [B,L] int64
    attention_mask: torch.Tensor  # [B,L] int64, 0 = a position the model does not attend to (padding)
    # [B] int64: pairs with one id share an image (a JSONL caption list); None: every pair has its own image
    image_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])

    def same_image(self) -> torch.Tensor | None:
        """`[B, B]` bool, True where pair j is another caption of pair i's image (neither the positive nor a negative
        of i in the family's loss: `Family.loss`); None when no two pairs of the batch share an image."""
        if self.image_ids is None:
            return None
        ids = self.image_ids
        same = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)
        return same if bool(same.any()) else None

    def head(self, n: int) -> Batch:
        """The batch's first `n` pairs."""
        ids = None if self.image_ids is None else self.image_ids[:n]
        return Batch(self.pixel_values[:n], self.input_ids[:n], self.attention_mask[:n], ids)

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`."""
        ids = None if self.image_ids is None else self.image_ids.to(device)
        return Batch(self.pixel_values.to(device), self.input_ids.to(device), self.attention_mask.to(device), ids)


def check_batch(adapter: Adapter, batch: Batch, where: str) -> None:
    """Refuse model inputs a caller built that the model cannot take, in one line (transformers would fail with a
    traceback, an index error or, for a non-finite pixel, NaN scores that sort masks by position)."""
    px, ids, mask = batch.pixel_values, batch.input_ids, batch.attention_mask
    size = adapter.image_size
    if px.ndim != 4 or px.shape[1] != 3 or tuple(px.shape[2:]) != (size, size):
        raise UserError(f"{where}: pixel_values is {list(px.shape)}; the model takes [B, 3, {size}, {size}]")
    if ids.ndim != 2 or ids.shape[0] != px.shape[0] or mask.shape != ids.shape:
        raise UserError(f"{where}: input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} must both be "
                        f"[B, L] with the B = {px.shape[0]} of pixel_values")
    if batch.image_ids is not None and tuple(batch.image_ids.shape) != (px.shape[0],):
        raise UserError(f"{where}: image_ids is {list(batch.image_ids.shape)}; expected [{px.shape[0]}], one per pair")
    longest = adapter.fixed_text_len or adapter.max_text_len
    if ids.shape[1] > longest or (adapter.fixed_text_len and ids.shape[1] != longest):
        at = "exactly" if adapter.fixed_text_len else "at most"
        raise UserError(f"{where}: input_ids has {ids.shape[1]} tokens; the model takes {at} {longest}")
    vocab = adapter.vocab_size
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise UserError(f"{where}: input_ids holds ids outside the vocabulary (0..{vocab - 1}): "
                        f"{int(ids.min())}..{int(ids.max())}")
    if not bool(torch.isfinite(px).all()):
        raise UserError(f"{where}: pixel_values holds NaN or infinite values")


def make_batch(adapter: Adapter, images: list, captions: list[str], image_ids: list[int] | None = None) -> Batch:
    """Preprocess with the model's own processor and tokenizer; `image_ids`: which pairs share an image (`Batch`)."""
    ids, mask = adapter.tokenize(captions)
    same = None if image_ids is None else torch.tensor(image_ids, dtype=torch.int64)
    return Batch(adapter.pixel_values(images), ids, mask, same)


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
    for images, captions, image_ids in raw_pair_chunks(source, n, batch_size, offset):
        truncated += count_truncated(adapter, captions)
        total += len(captions)
        yield make_batch(adapter, images, captions, image_ids)
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


def calib_from_python(adapter: Adapter, calib: Any, n: int, batch_size: int) -> CalibSource | None:
    """A calibration source from what a Python user holds: a path, "shapes", pairs (`n` of them, in batches of
    `batch_size`), or model-input batches (their first `n` pairs, each batch checked against the model)."""
    if calib is None or isinstance(calib, (str, Path)):
        return parse_calib(None if calib is None else str(calib))
    items = list(calib) if isinstance(calib, Iterable) else None
    if not items:
        raise UserError("calib: expected 'shapes', a JSONL path, (image, caption) pairs or input batches")
    if isinstance(items[0], Mapping | Batch):
        needed = ("pixel_values", "input_ids")
        masked = "attention_mask" in adapter.tower_inputs["text"]  # SigLIP attends everywhere: an all-ones mask
        for i, b in enumerate(items):
            if not isinstance(b, Batch) and not (isinstance(b, Mapping) and all(
                    isinstance(b.get(k), torch.Tensor) for k in needed)):
                raise UserError(f"calib: batch {i} needs {' and '.join(needed)} tensors (and attention_mask for "
                                f"CLIP); it has {sorted(b) if isinstance(b, Mapping) else type(b).__name__}")
            if masked and isinstance(b, Mapping) and not isinstance(b.get("attention_mask"), torch.Tensor):
                raise UserError(f"calib: batch {i} needs an attention_mask tensor: this model's text tower takes one")
        batches = [b if isinstance(b, Batch) else
                   Batch(b["pixel_values"].float(), b["input_ids"].long(),
                         b["attention_mask"].long() if masked else torch.ones_like(b["input_ids"]).long())
                   for b in items]
        # the first `n` pairs, as `calib_samples` says (a bad `n` is refused by prune's own checks)
        kept, left = [], n if is_whole(n) else sum(map(len, batches))
        for i, b in enumerate(batches):
            check_batch(adapter, b, f"calib: batch {i}")
            if left > 0:
                kept.append(b if len(b) <= left else b.head(left))
                left -= len(kept[-1])
        return CalibSource("memory", batches=tuple(kept))
    if adapter.tokenizer is None or adapter.image_processor is None:
        raise UserError("calibrating from (image, caption) pairs needs the model's tokenizer= and processor=")
    pairs = items[:n] if is_whole(n) else items
    from PIL import Image

    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], Image.Image)
                and isinstance(pair[1], str)):
            raise UserError(f"calib: pair {i} is not (PIL image, caption) but {pair!r:.80}; a JSONL file of "
                            "image paths and captions goes in as its path")
    captions = [p[1] for p in pairs]
    warn_truncated(adapter, count_truncated(adapter, captions), len(captions), "calibration captions")
    size = batch_size if is_whole(batch_size) and batch_size > 0 else 32  # a bad one is refused by prune
    batches = [make_batch(adapter, [p[0] for p in pairs[i:i + size]], [p[1] for p in pairs[i:i + size]],
                          _same_objects([p[0] for p in pairs[i:i + size]])) for i in range(0, len(pairs), size)]
    return CalibSource("memory", batches=tuple(batches))


def _same_objects(images: list) -> list[int] | None:
    """Image ids (`raw_pair_chunks`) of in-memory pairs: one PIL image given with several captions is one image."""
    first: dict[int, int] = {}
    ids = [first.setdefault(id(im), k) for k, im in enumerate(images)]
    return ids if len(first) < len(images) else None
