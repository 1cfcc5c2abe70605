"""Synthetic benchmark inputs: random images and caption-length token ids that end in a valid EOS."""

from __future__ import annotations

from itertools import cycle, islice
from typing import Any

import numpy as np

CAPTION = "a photo of a small red circle to the left of a large blue square on a grey background"
DEFAULT_TEXT_LEN = 16  # a typical caption (COCO captions average ~12 words, ~14 tokens)


def pixel_values(batch: int, image_size: int, seed: int = 0) -> np.ndarray:
    """Random normalised pixels `[batch, 3, image_size, image_size]` float32 (N(0,1), as after CLIP's normalisation)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)


def text_inputs(
    batch: int,
    text_len: int,
    tokenizer: Any = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids `[batch, text_len]` int64 and a full attention mask.

    Each row is `BOS, caption tokens repeated..., EOS`: exactly `text_len`
    tokens, none of them padding, ending at the token CLIP pools from.

    Args:
        batch: rows.
        text_len: tokens per row (>= 1; with 1 the row is just EOS).
        tokenizer: a Hugging Face tokenizer: the caption tokens and BOS/EOS
            ids come from it.
        bos_token_id: without a tokenizer: the BOS id (None: no BOS).
        eos_token_id: without a tokenizer: the EOS id; the body is then random
            ids below min(BOS, EOS), so an argmax-over-ids pooling still finds EOS.
        seed: random seed for the body without a tokenizer.
    """
    if text_len < 1:
        raise ValueError(f"text_len must be >= 1, got {text_len}")
    if tokenizer is not None:
        bos_token_id, eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        body = list(tokenizer(CAPTION, add_special_tokens=False)["input_ids"]) or [eos_token_id]
        body = [t for t in body if t not in (bos_token_id, eos_token_id)] or [0]
    else:
        if eos_token_id is None:
            raise ValueError("give a tokenizer or an eos_token_id")
        high = min(i for i in (bos_token_id, eos_token_id) if i is not None)
        body = np.random.default_rng(seed).integers(1, max(2, high), size=max(text_len, 1)).tolist()
    head = [bos_token_id] if bos_token_id is not None and text_len >= 2 else []
    n_body = text_len - len(head) - 1
    row = head + list(islice(cycle(body), n_body)) + [eos_token_id]
    ids = np.tile(np.asarray(row, dtype=np.int64), (batch, 1))  # [B, L]
    return ids, np.ones_like(ids)
