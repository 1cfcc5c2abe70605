"""Calibration sources: where image-caption pairs come from, how many there are, and the raw pairs in chunks.

Turning pairs into model inputs needs a model's processor and tokenizer:
that is `mfdeploy.models.inputs` (data never imports models)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from mfdeploy.data import world
from mfdeploy.data.pairs import check_images, load_pairs, open_image, origin_of
from mfdeploy.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibSource:
    """Where calibration pairs come from: 'shapes' (the bundled world) or a JSONL file."""

    kind: str  # "shapes" | "jsonl" | "memory" (prepared batches, for benchmarks on models without processors)
    path: Path | None = None
    batches: tuple[Any, ...] = ()  # "memory": `mfdeploy.models.inputs.Batch` objects

    def describe(self) -> str:
        if self.kind == "memory":
            return f"in-memory batches ({sum(len(b) for b in self.batches)} pairs)"
        return "shapes (calibration seed range)" if self.kind == "shapes" else str(self.path)


@overload
def parse_calib(value: str, samples: int = 0, decode: bool = False) -> CalibSource: ...
@overload
def parse_calib(value: None, samples: int = 0, decode: bool = False) -> None: ...
def parse_calib(value: str | None, samples: int = 0, decode: bool = False) -> CalibSource | None:
    """Turn a `--calib` value into a source, checked at once for the `samples` calibration pairs a command will
    use: the shapes world must hold that many; a JSONL path is validated and the headers of its first `samples`
    images are read (a bad one fails now, not mid-run), with `decode` their pixels too."""
    if value is None:
        return None
    if value == "shapes":
        world.check_calib_count(samples)
        return CalibSource("shapes")
    path = Path(value)
    if path.is_dir():
        raise UserError(f"--calib {value}: a directory; expected 'shapes' or a JSONL file of image-caption pairs")
    pairs = load_pairs(path)  # fail early, with file and line (a missing file too)
    check_images(path, pairs[:samples], decode)
    return CalibSource("jsonl", path)


def pairs_available(source: CalibSource, n: int, offset: int = 0) -> int:
    """How many pairs `pair_batches(adapter, source, n, ..., offset)` yields: `n`, or fewer when the file is short."""
    if source.kind == "memory":  # prepared batches are yielded whole, whatever `n` says
        return sum(len(b) for b in source.batches)
    if source.kind == "shapes":  # the world's calibration range is unbounded
        return n
    assert source.path is not None
    return max(0, min(n, len(load_pairs(source.path)) - offset))


def calibration_pairs(source: CalibSource, requested: int, flag: str = "--calib-samples") -> int:
    """The number of calibration pairs that will be used for `requested`; warns once when the source has fewer.

    The warning goes to the `mfdeploy.data.batching` logger: with no logging
    configured (the CLI), Python prints it as one line on stderr.
    """
    used = pairs_available(source, requested)
    if used < requested:
        log.warning("warning: %s holds %d image-caption pairs, fewer than %s %d: calibrating on %d",
                    source.describe(), used, flag, requested, used)
    return used


def raw_pair_chunks(source: CalibSource, n: int, batch_size: int,
                    offset: int = 0) -> Iterator[tuple[list[Any], list[str], list[int] | None]]:
    """`n` calibration pairs from `source` as `(PIL images, captions, image ids)` chunks of `batch_size`.

    The shapes world yields its calibration seeds in order (deterministic); a
    JSONL file yields its first `n` pairs (all of them when it has fewer).
    Image ids say which pairs of a chunk share one image (a JSONL caption
    list, or one image on several lines): each pair's id is the position of
    the chunk's first pair with its image; None when every image is its own.
    """
    if n <= 0 or batch_size <= 0:
        raise UserError("calibration sample count and batch size must be positive")
    if source.kind == "memory":
        raise UserError("in-memory calibration batches are model inputs already, not raw pairs")
    if source.kind == "shapes":
        seeds = list(world.split_seeds("calib", n, offset))
        for i in range(0, n, batch_size):
            scenes = [world.make_scene(s) for s in seeds[i:i + batch_size]]
            yield [s.render() for s in scenes], [s.caption() for s in scenes], None
        return
    assert source.path is not None
    pairs = load_pairs(source.path)[offset:offset + n]
    if not pairs:
        raise UserError(f"{source.path}: fewer than {offset + 1} pairs")
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        first: dict[Path, int] = {}
        ids = [first.setdefault(p.image, k) for k, p in enumerate(chunk)]
        images = {p.image: open_image(p.image, origin_of(source.path, p)) for k, p in enumerate(chunk) if ids[k] == k}
        yield [images[p.image] for p in chunk], [p.caption for p in chunk], ids if len(first) < len(chunk) else None
