"""Request inputs to tower inputs, with the build's own tokenizer and image processor.

The server embeds exactly what `onnx/` embeds for the same text or image:
texts are tokenized as the evaluation and parity checks tokenize them, by the
model family's convention (CLIP: padded to the longest text of the model call;
SigLIP: padded to its fixed length, no mask), truncated at the model's text length,
which the app allows only when asked: `token_counts` finds the texts it would
cut), images are decoded by `mfdeploy.data.images` (sizes checked from the
headers first; `decoding.py` bounds the pictures decoded at once) and go
through the checkpoint's own image processor.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mfdeploy.data.images import DEFAULT_MAX_PIXELS, ImageError, ImageTooLarge, open_checked, to_rgb
from mfdeploy.models.family import PairScorer
from mfdeploy.models.processors import (
    load_image_processor,
    load_tokenizer,
    quiet_transformers,
    resized_pixels,
    token_counts,
)
from mfdeploy.models.registry import family_of, scoring_constants

_LINE_BREAKS = str.maketrans("", "", "\r\n")
DATA_URI = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(?:;[\w=.-]+)*;base64,", re.IGNORECASE)


class BadInput(ValueError):
    """An input the server cannot use; the message names which one and why."""


class TooLarge(BadInput):
    """Images over the pixel limits (`--max-image-pixels`, `--max-request-pixels`): answered 413."""


def _raw(value: object, where: str) -> bytes:
    """A `data:image/...;base64,...` URI or bare base64 -> the file's bytes."""
    if not isinstance(value, str) or not value:
        raise BadInput(f"{where}: expected an image as a base64 string or a data:image/...;base64 URI")
    match = DATA_URI.match(value)
    if match is not None:
        mime = match.group("mime") or ""
        if mime and not mime.lower().startswith("image/"):
            raise BadInput(f"{where}: a data URI of type {mime}, not an image")
        value = value[match.end():]
    elif value[:8].lower().startswith(("http://", "https://")):
        raise BadInput(f"{where}: an image URL; the server fetches none: send the image's bytes, base64-encoded "
                       "(a data:image/...;base64 URI)")
    try:  # line breaks, as MIME base64 wraps it (`base64 photo.png`, Python's encodebytes), are not part of it
        return base64.b64decode(value.translate(_LINE_BREAKS), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{where}: not valid base64") from None


def open_image(value: object, where: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A base64 image opened, header only, its size checked (`mfdeploy.data.images.open_checked`).

    Raises:
        TooLarge: more than `max_pixels` pixels.
        BadInput: not a string, not base64, or not an image Pillow can open.
    """
    raw = _raw(value, where)
    try:
        return open_checked(raw, where, max_pixels)
    except ImageTooLarge as e:
        raise TooLarge(f"{e} (--max-image-pixels)") from None
    except ImageError as e:
        raise BadInput(str(e)) from None


def decode_image(value: object, where: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A base64 image -> its RGB picture (decoded in full, by the rules of `mfdeploy.data.images`).

    Raises:
        TooLarge: more than `max_pixels` pixels (found from the header: nothing decoded).
        BadInput: not a string, not base64, not an image Pillow can decode, or a mode without a rule.
    """
    with open_image(value, where, max_pixels) as img:
        try:
            return to_rgb(img, where)  # decodes every pixel: a truncated file fails here, not in the model call
        except ImageError as e:
            raise BadInput(str(e)) from None


class Preprocessor:
    """The tokenizer, image processor, text length, family and pair score of a build's `pruned/` checkpoint."""

    def __init__(self, checkpoint: Path):
        from transformers import AutoConfig

        quiet_transformers()
        self.family = family_of(checkpoint)  # its tokenization convention and scoring (CLIP softmax, SigLIP sigmoid)
        self.tokenizer = load_tokenizer(checkpoint)
        # a fast tokenizer keeps its padding and truncation settings between calls: the request threads counting
        # tokens and the model thread tokenizing reset each other's, and a batch came out ragged (a 500)
        self._tokenizing = threading.Lock()
        self.image_processor = load_image_processor(checkpoint)
        config = AutoConfig.from_pretrained(checkpoint)
        self.max_text_len = int(config.text_config.max_position_embeddings)
        self.logit_scale, bias = scoring_constants(checkpoint)
        self.scorer = PairScorer(self.family, torch.tensor([self.logit_scale]),
                                 None if bias is None else torch.tensor([bias]))

    def texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`[B, L]` int64 ids and attention mask as the model's family tokenizes (`Family.tokenize`), truncated
        at the model's length: CLIP pads to the longest text; SigLIP to its fixed length, all positions attended."""
        with self._tokenizing:
            return self.family.tokenize(self.tokenizer, texts, self.max_text_len)

    def text_tokens(self, texts: Sequence[str], mask: np.ndarray) -> np.ndarray:
        """`[B]` tokens of each text the model reads (for `usage`): its mask's count where the text tower takes
        one; else (SigLIP: a fixed length, every position attended) the text's own tokens, cut at the length,
        not the padding."""
        if "attention_mask" in self.family.text_inputs:
            return mask.sum(axis=1)
        return np.minimum(np.asarray(self.token_counts(texts), dtype=np.int64), self.max_text_len)

    def scores(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """`[D]` and `[N, D]` L2-normalised -> `[N]` probabilities by the family's scoring: a softmax over the
        N texts (CLIP), or one independent sigmoid per text, with the logit bias (SigLIP)."""
        with torch.no_grad():
            probs = self.scorer.probabilities(torch.from_numpy(np.asarray(image_embeds, dtype=np.float32)[None]),
                                              torch.from_numpy(np.asarray(text_embeds, dtype=np.float32)))
        return probs[0].double().numpy()

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text before truncation (special tokens included), to compare with `max_text_len`."""
        with self._tokenizing:
            return token_counts(self.tokenizer, texts)

    def resized_pixels(self, width: int, height: int) -> int:
        """Pixels of the picture the image processor resizes a `width` x `height` image to (`processors`)."""
        return resized_pixels(self.image_processor, width, height)

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """`[B, 3, H, W]` float32 pixel values."""
        return np.asarray(self.image_processor(images=list(images), return_tensors="np")["pixel_values"],
                          dtype=np.float32)


__all__ = ["BadInput", "Preprocessor", "TooLarge", "decode_image", "open_image"]
