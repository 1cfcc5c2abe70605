"""The one image decoder: a raster image file -> the RGB picture a person would see, pixels bounded.

Only Pillow's plugins for the raster formats (`FORMATS`: PNG, JPEG, GIF, WebP,
TIFF, BMP, PNM and a few more) may open a file: its other plugins include
EPS, which hands the file to Ghostscript, and the server decodes what any
client sends.

Every image path uses it: calibration and evaluation files, image folders,
the server's base64 inputs and the Python API's PIL images (`to_rgb`).
Pillow's own `convert("RGB")` is wrong for several modes (a 16-bit PNG
comes out white, a transparent pixel shows whatever colour it hides), so the
rules are spelled out here:

- animated GIF/WebP/APNG and multi-page TIFF: the first frame;
- EXIF orientation applied (a phone photo stands the way it was taken);
- 1, L, P, RGB, RGBX, YCbCr, LAB, HSV, CMYK: Pillow's conversion (CMYK
  without colour management: the ICC profile, if any, is not applied);
- 16-bit integer (I;16, I;16B, I;16L, I;16N): scaled by the type's range,
  `round(v * 255 / 65535)`, so a dark 16-bit picture stays dark and equals
  its 8-bit version (stretching by the content's own range would change it);
- 32-bit integer (I): the same when every value lies in 0..65535 (how Pillow
  reads 16-bit PGM and older Pillows 16-bit PNG); otherwise from
  `min(0, lowest)` to `highest`;
- 32-bit float (F): values in 0..1 are scaled by 255; otherwise from
  `min(0, lowest)` to `highest`; a NaN or infinite pixel is refused;
- transparency (RGBA, LA, PA, RGBa, La, and P, L or RGB with a transparent
  colour): composited on white, as a browser shows it on a white page
  (dropping the alpha channel would show the colours hidden under
  transparent pixels, often black);
- anything else is refused in one line naming the mode.

The size is checked from the header, before any pixel is decoded, against a
limit in pixels (`DEFAULT_MAX_PIXELS` unless the caller gives another).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from mfdeploy.errors import UserError, first_line

# Pillow's format names tried on every image (its `Image.open(formats=...)`; JPEG opens a phone's MPO too); a name
# this Pillow has no plugin for (its build left it out) is skipped
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP", "DIB", "PPM", "TGA", "ICO", "JPEG2000", "QOI", "AVIF")
DEFAULT_MAX_PIXELS = 64_000_000  # per image: every camera up to 61 MP; a 12000x12000 bomb is refused
_PILLOW_MODES = {"1", "L", "P", "RGB", "RGBX", "YCbCr", "LAB", "HSV", "CMYK"}  # Pillow converts these right
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
_ROTATED = {2, 3, 4, 5, 6, 7, 8}  # EXIF orientations other than upright (1)
_BLOCK_PIXELS = 4_000_000  # integer/float images are rescaled in row blocks of this size: bounded temporaries

# mfdeploy bounds pixels itself (from the header, in one line); Pillow's warning for the same thing would
# only print a second, raw message on stderr. Its DecompressionBombError (at twice its limit) is still caught.
# Pillow's UserWarnings about a damaged file ("Corrupt EXIF data", "Truncated File Read") would print raw too:
# the file either decodes (its pixels are fine) or fails here in one line.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
# Pillow also logs some failures before raising them ("More samples per pixel than can be decoded"); with
# logging unconfigured (the CLI) Python would print them raw. A NullHandler stops that and nothing else:
# records still reach the handlers of a program that configures logging.
logging.getLogger("PIL").addHandler(logging.NullHandler())


class ImageError(UserError):
    """An image that cannot be used: not decodable, a mode without a rule, or too large (one line)."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit, found from its header (nothing was decoded)."""

    def __init__(self, message: str, pixels: int, limit: int):
        super().__init__(message)
        self.pixels, self.limit = pixels, limit


def _formats() -> list[str]:
    Image.init()  # registers every plugin, so that `Image.OPEN` lists them
    return [name for name in FORMATS if name in Image.OPEN]


def open_checked(source: str | Path | bytes | BinaryIO, where: str = "",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image's first frame, header only, and check its size; the caller decodes it with `to_rgb`.

    Args:
        source: a path, the file's bytes, or a binary file object.
        where: names the image in errors (a path, or a request field such as `input[2]`).
        max_pixels: most pixels (width x height) allowed; None: no limit but Pillow's own.

    Returns:
        The opened image (close it, or use it in a `with`).

    Raises:
        ImageTooLarge: more pixels than `max_pixels` (or than Pillow's decompression-bomb limit).
        ImageError: not an image in one of `FORMATS`, or one Pillow cannot open.
    """
    prefix = f"{where}: " if where else ""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        img = Image.open(fp, formats=_formats())
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit: it refuses before we see the size
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(found.group(1)) if found else 2 * int(Image.MAX_IMAGE_PIXELS or 0) + 1
        limit = max_pixels if max_pixels is not None else 2 * int(Image.MAX_IMAGE_PIXELS or 0)
        raise ImageTooLarge(f"{prefix}an image of {pixels:,} pixels is over the limit of {limit:,} pixels per "
                            "image", pixels, limit) from None
    except MemoryError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{prefix}not a decodable image (UnidentifiedImageError; accepted formats: "
                         f"{', '.join(_formats())})") from None
    except Exception as e:  # noqa: BLE001 - whatever a format plugin raises on a bad file (struct.error, ...)
        raise ImageError(f"{prefix}not a decodable image ({type(e).__name__})") from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageTooLarge(f"{prefix}a {width}x{height} image ({width * height:,} pixels) is over the limit of "
                            f"{max_pixels:,} pixels per image", width * height, max_pixels)
    return img


def to_rgb(img: Image.Image, where: str = "") -> Image.Image:
    """The RGB picture of an opened or in-memory image, by the module's rules (decodes every pixel).

    Raises:
        ImageError: a mode without a rule, a NaN/infinite float pixel, or pixel data that does not decode
            (a truncated file).
    """
    prefix = f"{where}: " if where else ""
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if img.getexif().get(ExifTags.Base.Orientation, 1) in _ROTATED:  # exif_transpose copies even when upright
            img = ImageOps.exif_transpose(img)
        mode = img.mode
        if mode in _ALPHA_MODES or ("transparency" in img.info and mode in {"P", "L", "RGB"}):
            rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")  # no La -> RGBA in Pillow
            out = Image.new("RGB", rgba.size, (255, 255, 255))
            out.paste(rgba, mask=rgba.getchannel("A"))  # blends: white * (1 - alpha) + colour * alpha
            return out
        if mode == "RGB":
            img.load()  # decode now: the caller may close the file
            return img
        if mode in _PILLOW_MODES:
            return img.convert("RGB")
        if mode in _SIXTEEN_BIT or mode in {"I", "F"}:
            return Image.fromarray(_levels(np.asarray(img), mode, prefix)).convert("RGB")
    except (ImageError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - whatever a decoder raises on bad pixel data or EXIF is the file's
        raise ImageError(f"{prefix}not a decodable image ({type(e).__name__}: {first_line(e)})") from None
    raise ImageError(f"{prefix}image mode {mode} is not supported (convert it to RGB, L or a 16-bit PNG)")


def load_rgb(source: str | Path | bytes | BinaryIO, where: str = "",
             max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`open_checked` then `to_rgb`: a file or bytes -> its RGB picture, the file closed."""
    with open_checked(source, where, max_pixels) as img:
        return to_rgb(img, where)


def allow_pixels(limit: int) -> None:
    """Raise Pillow's decompression-bomb limit to `limit` when it is lower, so that only mfdeploy's applies."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit


def _levels(arr: np.ndarray, mode: str, prefix: str) -> np.ndarray:
    """One-channel integer or float pixels -> uint8 levels `[H, W]`, by the rules of the module docstring."""
    if arr.size == 0:
        return np.zeros(arr.shape, np.uint8)
    if mode == "F" and not np.isfinite(arr).all():
        raise ImageError(f"{prefix}a float (mode F) image with NaN or infinite pixels")
    lo, hi = float(arr.min()), float(arr.max())
    if mode in _SIXTEEN_BIT or (mode == "I" and lo >= 0 and hi <= 65535):
        low, high = 0.0, 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        low, high = 0.0, 1.0
    else:
        low, high = min(0.0, lo), hi
    if high <= low:  # a constant image at zero: black
        return np.zeros(arr.shape, np.uint8)
    out = np.empty(arr.shape, np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(1, arr.shape[1]))
    for r in range(0, arr.shape[0], rows):
        block = arr[r:r + rows].astype(np.float64)
        out[r:r + rows] = np.clip(np.rint((block - low) * (255.0 / (high - low))), 0, 255)
    return out


__all__ = ["DEFAULT_MAX_PIXELS", "ImageError", "ImageTooLarge", "allow_pixels", "load_rgb", "open_checked",
           "to_rgb"]
