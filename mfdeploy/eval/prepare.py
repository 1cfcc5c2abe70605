"""Model inputs of an evaluation set, made with the model's own image processor and tokenizer.

Preprocessed arrays are cached in-process, keyed by the set's content and by
fingerprints of the image processor and tokenizer: the pruned variants of one
model share both, so a benchmark that evaluates dozens of them renders and
preprocesses the data once.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mfdeploy.data.pairs import open_image
from mfdeploy.eval.datasets import EvalSet
from mfdeploy.models.base import Adapter
from mfdeploy.models.inputs import count_truncated, warn_truncated

_CHUNK = 256  # images decoded and preprocessed at once
_CACHE_SIZE = 2  # a shapes suite at the default sizes holds ~100 MB of pixels
_cache: OrderedDict[tuple, Prepared] = OrderedDict()
log = logging.getLogger(__name__)  # with logging unconfigured (the CLI), a warning prints as one line on stderr


@dataclass(frozen=True, eq=False)
class Prepared:
    """Model inputs of an `EvalSet` (numpy arrays, ready for any `Runner`)."""

    evalset: EvalSet
    pixels: np.ndarray | None  # [N,3,H,W] float32, classification images
    prompts: dict[str, tuple[np.ndarray, np.ndarray]]  # task -> (input_ids, attention_mask) [C,L] int64
    labels: dict[str, np.ndarray]  # task -> [N] int64
    retrieval_pixels: np.ndarray | None  # [Ni,3,H,W] float32
    caption_ids: np.ndarray | None  # [Nt,L] int64
    caption_mask: np.ndarray | None  # [Nt,L] int64
    positives: np.ndarray | None  # [Ni,Nt] bool, True where image and caption are paired


def _fingerprint(obj: object, text: str) -> str:
    return f"{type(obj).__name__}:{hashlib.sha1(text.encode()).hexdigest()}"


def processor_fingerprint(adapter: Adapter) -> tuple[str, str]:
    """Identify the image processor and the tokenizer by content, not by where they were loaded from."""
    proc = adapter.image_processor
    to_json = getattr(proc, "to_json_string", None)
    # the model's image size and vocabulary too: the arrays are checked against them when made
    # (`Adapter.pixel_values`, `Adapter.tokenize`), so another model must not reuse them unchecked
    proc_fp = _fingerprint(proc, f"{to_json() if callable(to_json) else repr(proc)}|{adapter.image_size}")
    tok = adapter.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        tok_text = backend.to_str()
    else:
        tok_text = repr(sorted(tok.get_vocab().items()))
    # the family's convention too: CLIP and SigLIP checkpoints can share a tokenizer but not how it pads
    convention = f"{adapter.family.text_padding}|{','.join(adapter.family.text_inputs)}"
    tok_fp = _fingerprint(tok, f"{tok_text}|{adapter.max_text_len}|{getattr(tok, 'padding_side', '')}|{convention}"
                                       f"|{adapter.vocab_size}")
    return proc_fp, tok_fp


def _pixels(adapter: Adapter, images: Sequence[Image.Image | Path], origin: str) -> np.ndarray:
    chunks = []
    for i in range(0, len(images), _CHUNK):
        batch = [open_image(im, origin) if isinstance(im, Path) else im for im in images[i:i + _CHUNK]]
        chunks.append(adapter.pixel_values(batch).numpy().astype(np.float32, copy=False))
    return np.concatenate(chunks)


def _tokens(adapter: Adapter, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = adapter.tokenize(list(texts))
    return ids.numpy().astype(np.int64, copy=False), mask.numpy().astype(np.int64, copy=False)


def prepare(adapter: Adapter, evalset: EvalSet) -> Prepared:
    """Preprocess an evaluation set for a model (cached: see the module docstring).

    Args:
        adapter: the model whose image processor and tokenizer to use.
        evalset: the raw data.

    Returns:
        The model inputs, shared between calls with the same data and processors:
        treat the arrays as read-only.
    """
    key = (evalset.key, *processor_fingerprint(adapter))
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    origin = evalset.origin
    pixels = _pixels(adapter, evalset.images, origin) if evalset.images else None
    prompts = {name: _tokens(adapter, task.prompts) for name, task in evalset.tasks.items()}
    labels = {name: np.asarray(task.labels, dtype=np.int64) for name, task in evalset.tasks.items()}
    r_pixels = ids = mask = positives = None
    if evalset.pairs:
        r_pixels = _pixels(adapter, evalset.retrieval_images, origin)
        ids, mask = _tokens(adapter, evalset.captions)
        positives = np.zeros((len(evalset.retrieval_images), len(evalset.captions)), dtype=bool)
        img_idx, cap_idx = np.asarray(evalset.pairs, dtype=np.int64).T
        positives[img_idx, cap_idx] = True
    texts = [p for task in evalset.tasks.values() for p in task.prompts] + list(evalset.captions)
    warn_truncated(adapter, count_truncated(adapter, texts), len(texts),
                   f"prompts and captions of {origin or 'the set'}")
    trivial = evalset.trivial_recalls()
    if trivial:  # once per set and model, as the set is prepared once
        names = ", ".join(trivial[:-1]) + " and " + trivial[-1] if len(trivial) > 1 else trivial[0]
        most = max(int(t.rsplit("@", 1)[1]) for t in trivial)
        n_cap, n_img = len(evalset.captions), len(evalset.retrieval_images)
        log.warning("warning: %s holds %d distinct caption%s and %d image%s: %s %s 100%% whatever the model (no "
                    "more than k to rank); use more than %d of each for a meaningful score", origin or "the set",
                    n_cap, "" if n_cap == 1 else "s", n_img, "" if n_img == 1 else "s", names,
                    "is" if len(trivial) == 1 else "are", most)
    prepared = Prepared(evalset, pixels, prompts, labels, r_pixels, ids, mask, positives)
    _cache[key] = prepared
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return prepared


def clear_cache() -> None:
    """Drop every cached preprocessed set (and the rendered shapes suites)."""
    from mfdeploy.eval.datasets import _shapes_suite

    _cache.clear()
    _shapes_suite.cache_clear()
