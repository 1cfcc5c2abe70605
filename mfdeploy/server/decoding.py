"""A request's images -> model-size pixel arrays, with the server's memory for full-size pictures bounded.

Three bounds, each checked before the pixels they bound are decoded:
- per image (`--max-image-pixels`) and per request (`--max-request-pixels`),
  read from the headers: over either, the request gets 413 and nothing is
  decoded;
- server-wide, the `PixelBudget`: full-size pictures being decoded and
  preprocessed at once hold at most twice `--max-image-pixels` (small images
  decode many at a time, large ones a couple at a time), whatever the number
  of clients. A picture takes about 13 bytes per pixel at its peak (Pillow's
  RGB, the image processor's arrays while it resizes), so the defaults bound
  it near 1.7 GB.

Each picture is preprocessed to the model's size and dropped before the next
is decoded, so the batcher's queue holds `[3, H, W]` arrays only, and a
request of many pixels ends with glibc handing the freed memory back to the
OS (`malloc_trim`): without it the process stays at its peak.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from PIL import Image

from mfdeploy.data.images import ImageError, to_rgb
from mfdeploy.models.processors import grown_too_large
from mfdeploy.platform import release_freed_memory
from mfdeploy.server.preprocess import BadInput, TooLarge, open_image

RELEASE_AFTER_PIXELS = 16_000_000  # after a request with this many pixels, freed memory goes back to the OS


class PixelBudget:
    """A weighted semaphore in pixels, for the worker threads that decode images.

    Args:
        total: most pixels held at once; one picture larger than it (impossible with the server's limits)
            waits for the budget to be empty and then runs alone.
    """

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Block until `pixels` fit in the budget; hold them for the `with` block."""
        pixels = min(pixels, self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.used + pixels <= self.total)
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


def request_images(values: Sequence[object], names: Sequence[str], max_image_pixels: int, max_request_pixels: int,
                   preprocess: Callable[[Image.Image], np.ndarray], budget: PixelBudget,
                   resized: Callable[[int, int], int] = lambda w, h: w * h) -> list[np.ndarray]:
    """The images of one request -> their `[3, H, W]` pixel values (runs on a worker thread).

    Args:
        values: the base64 images.
        names: the request field of each, for errors (`input[2]`).
        max_image_pixels, max_request_pixels: the limits, per image and for all of them together.
        preprocess: one RGB picture -> its `[3, H, W]` float32 pixel values.
        budget: the server-wide bound on full-size pictures held at once.
        resized: width, height -> the pixels of the picture `preprocess` resizes it to (before a crop); an image
            whose resized picture is over `max_image_pixels` is refused like a larger one (a 30000 x 1 PNG of a
            few hundred bytes became gigabytes in a shortest-edge resize).

    Raises:
        TooLarge: an image, or all of them together, over a limit (nothing decoded).
        BadInput: an image that does not decode.
    """
    opened: list[Image.Image] = []
    total = 0
    try:
        held = []  # pixels each picture holds at its peak: itself, or its resized picture when larger
        for value, name in zip(values, names):
            img = open_image(value, name, max_image_pixels)  # header only
            opened.append(img)
            total += img.width * img.height
            grown = resized(img.width, img.height)
            if grown > max_image_pixels:
                raise TooLarge(f"{name}: {grown_too_large(img.width, img.height, grown, max_image_pixels)} "
                               "(--max-image-pixels): send it cropped nearer to a square")
            held.append(max(img.width * img.height, grown))
        if total > max_request_pixels:
            raise TooLarge(f"the request's {len(values)} images hold {total:,} pixels, over the limit of "
                           f"{max_request_pixels:,} pixels per request (--max-request-pixels)")
        out = []
        for img, name, pixels in zip(opened, names, held):
            with budget.hold(pixels):
                try:
                    picture = to_rgb(img, name)
                except ImageError as e:
                    raise BadInput(str(e)) from None
                out.append(preprocess(picture))
                del picture  # to_rgb may return the opened image itself: closed only once preprocessed
                img.close()  # the full-size pixels go now, not when the request ends
        return out
    finally:
        for img in opened:
            img.close()
        if total > RELEASE_AFTER_PIXELS:
            release_freed_memory()


__all__ = ["PixelBudget", "RELEASE_AFTER_PIXELS", "request_images"]
