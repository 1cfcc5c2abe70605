"""Request inputs to tower inputs, with the build's own tokenizer and image processor.

The server embeds exactly what `onnx/` embeds for the same text or image:
texts are tokenized as the evaluation and parity checks tokenize them (padded
to the longest text of the model call, truncated at the model's text length),
images go through the checkpoint's own image processor.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mfdeploy.models.processors import load_image_processor, load_tokenizer

DATA_URI = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(?:;[\w=.-]+)*;base64,", re.IGNORECASE)


class BadInput(ValueError):
    """An input the server cannot use; the message names which one and why."""


def decode_image(value: object, where: str) -> Image.Image:
    """A `data:image/...;base64,...` URI or bare base64 -> an RGB image (decoded in full, so errors show here).

    Raises:
        BadInput: not a string, not base64, or not an image PIL can decode.
    """
    if not isinstance(value, str) or not value:
        raise BadInput(f"{where}: expected an image as a base64 string or a data:image/...;base64 URI")
    match = DATA_URI.match(value)
    if match is not None:
        mime = match.group("mime") or ""
        if mime and not mime.lower().startswith("image/"):
            raise BadInput(f"{where}: a data URI of type {mime}, not an image")
        value = value[match.end():]
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{where}: not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return img.convert("RGB")  # decodes every pixel: a truncated file fails here, not in the model call
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        raise BadInput(f"{where}: not a decodable image ({type(e).__name__})") from None


class Preprocessor:
    """The tokenizer, image processor, text length and logit scale of a build's `pruned/` checkpoint."""

    def __init__(self, checkpoint: Path):
        from transformers import AutoConfig

        self.tokenizer = load_tokenizer(checkpoint)
        self.image_processor = load_image_processor(checkpoint)
        config = AutoConfig.from_pretrained(checkpoint)
        self.max_text_len = int(config.text_config.max_position_embeddings)
        self.logit_scale = _logit_scale(checkpoint, float(getattr(config, "logit_scale_init_value", 2.6592)))

    def texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`[B, L]` int64 ids and attention mask, padded to the longest text, truncated at the model's length."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_len,
                             return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """`[B, 3, H, W]` float32 pixel values."""
        return np.asarray(self.image_processor(images=list(images), return_tensors="np")["pixel_values"],
                          dtype=np.float32)


def _logit_scale(checkpoint: Path, init_value: float) -> float:
    """exp(logit_scale) from the checkpoint's weights (the trained value; the config's initial one if absent)."""
    from safetensors import safe_open

    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            if "logit_scale" in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                return float(np.exp(np.asarray(f.get_tensor("logit_scale"), dtype=np.float64)).reshape(-1)[0])
    return float(np.exp(init_value))


__all__ = ["BadInput", "Preprocessor", "decode_image"]
