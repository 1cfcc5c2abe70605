"""A procedurally generated image-caption world: the bundled model's data.

Scenes hold one to three objects on a noisy background. Every object has a
shape, a colour, a size and a cell of a 3x3 grid; two-object scenes can also
be described by the relation between them. A scene is a pure function of its
seed, and the seed ranges of training, calibration and evaluation are
disjoint, so the held-out scenes are never seen in training or calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from mfdeploy.errors import UserError

IMAGE_SIZE = 96
_SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 205),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 215),
    "white": (240, 240, 240),
}
SIZES = {"small": (6.0, 7.5), "medium": (9.5, 11.0), "large": (13.0, 14.5)}  # radius in px
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
# Background grey level [low, high) before a +-10 tint per channel. Training, calibration and evaluation
# scenes are all "dark"; the others exist to measure how the bundled model copes off its training distribution.
BACKGROUNDS = {"dark": (15, 80), "mid": (95, 160), "light": (175, 240)}
# The 3x3 grid splits the image into 32x32 cells; a jittered object of any size stays inside its cell.
_CELL_CENTRES = (16.0, 48.0, 80.0)
_JITTER = 1.5  # px: an object's centre moves up to this far from its cell's centre
_COUNT_WORDS = ("one", "two", "three")
CAPTION_PREFIXES = ("a photo of ", "an image of ", "there is ", "")  # training captions start so

# Disjoint seed ranges: [start, stop)
SPLITS = {
    "train": (0, 10_000_000),
    "calib": (10_000_000, 11_000_000),
    "eval": (20_000_000, 21_000_000),
}

# Zero-shot tasks: attribute -> (class names, prompt template)
TASKS = {
    "shape": (SHAPES, "a photo of a {}."),
    "colour": (tuple(COLOURS), "a photo of a {} object."),
    "size": (tuple(SIZES), "a photo of a {} object."),
    "position": (POSITIONS, "a photo of an object at the {}."),
}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    position: str

    def phrase(self, rng: np.random.Generator | None = None, keep: float = 1.0, where: bool = True,
               must: str | None = None) -> str:
        """Noun phrase; with an rng, each attribute is kept with probability `keep` (`must` is always kept)."""

        def kept(attr: str) -> bool:
            return rng is None or attr == must or rng.random() < keep

        words = []
        if kept("size"):
            words.append(self.size)
        if kept("colour"):
            words.append(self.colour)
        words.append(self.shape if kept("shape") else "object")
        text = " ".join(words)
        if where and kept("position"):
            text += f" at the {self.position}"
        return text


@dataclass(frozen=True)
class Scene:
    seed: int
    objects: tuple[Obj, ...]

    def render(self, background: str = "dark") -> Image.Image:
        return render(self, background)

    def caption(self, rng: np.random.Generator | None = None) -> str:
        """Full caption (rng None) or a randomly phrased, partial one for training."""
        if rng is None:
            return "a photo of " + " and ".join(article(o.phrase()) for o in self.objects) + "."
        keep = 1.0 if rng.random() < 0.3 else 0.6
        if len(self.objects) == 1 or rng.random() < 0.25:
            # describe a single object; the others stay unmentioned
            obj = self.objects[rng.integers(len(self.objects))] if rng.random() < 0.5 else self.objects[0]
            body = article(obj.phrase(rng, keep))
            if len(self.objects) > 1 and rng.random() < 0.5:
                body += f" among {_COUNT_WORDS[len(self.objects) - 1]} objects"
        elif len(self.objects) == 2 and rng.random() < 0.35:
            body = _relation(self.objects[0], self.objects[1], rng)
        else:
            order = rng.permutation(len(self.objects))
            body = " and ".join(article(self.objects[i].phrase(rng, keep)) for i in order)
        if rng.random() < 0.3:
            body = f"{_COUNT_WORDS[len(self.objects) - 1]} object{'s' if len(self.objects) > 1 else ''}: {body}"
        prefix = CAPTION_PREFIXES[rng.integers(len(CAPTION_PREFIXES))]
        return prefix + body + "."


def article(phrase: str) -> str:
    """The phrase with its indefinite article."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _relation(a: Obj, b: Obj, rng: np.random.Generator) -> str:
    ra, ca = divmod(POSITIONS.index(a.position), 3)
    rb, cb = divmod(POSITIONS.index(b.position), 3)
    options = []
    if ca < cb:
        options.append("left of")
    if ca > cb:
        options.append("right of")
    if ra < rb:
        options.append("above")
    if ra > rb:
        options.append("below")
    rel = options[rng.integers(len(options))]
    return f"{article(a.phrase(rng, 0.7, where=False))} {rel} {article(b.phrase(rng, 0.7, where=False))}"


def make_scene(seed: int, n_objects: int | None = None) -> Scene:
    """The scene of a seed: one to three objects in distinct grid cells."""
    rng = np.random.default_rng([seed, 7919])
    n = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15])) if n_objects is None else n_objects
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    objects = tuple(
        Obj(
            shape=SHAPES[rng.integers(len(SHAPES))],
            colour=tuple(COLOURS)[rng.integers(len(COLOURS))],
            size=tuple(SIZES)[rng.integers(len(SIZES))],
            position=POSITIONS[int(c)],
        )
        for c in cells
    )
    return Scene(seed=seed, objects=objects)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.pi / 4 + k * math.pi / 2, r) for k in range(4)]
    elif shape == "diamond":
        pts = [(k * math.pi / 2, r) for k in range(4)]
    elif shape == "triangle":
        pts = [(-math.pi / 2 + k * 2 * math.pi / 3, r) for k in range(3)]
    elif shape == "star":
        pts = [(-math.pi / 2 + k * math.pi / 5, r if k % 2 == 0 else r * 0.45) for k in range(10)]
    elif shape == "cross":
        w = r * 0.38
        base = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r),
                (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        return [(cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle))
                for x, y in base]
    else:
        raise ValueError(shape)
    return [(cx + rad * math.cos(a + angle), cy + rad * math.sin(a + angle)) for a, rad in pts]


def render(scene: Scene, background: str = "dark") -> Image.Image:
    """Draw a scene as an IMAGE_SIZE x IMAGE_SIZE RGB image (deterministic by the scene's seed).

    Args:
        scene: what to draw.
        background: a key of `BACKGROUNDS`, the range of the background's grey
            level. Only the level changes: objects, jitter and noise are drawn
            from the same random stream, so "dark" (the default, and all the
            data the bundled model was trained on) is the historical rendering.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background {background!r}: expected one of {', '.join(BACKGROUNDS)}")
    rng = np.random.default_rng([scene.seed, 104729])
    s = _SUPERSAMPLE
    base = rng.integers(*BACKGROUNDS[background])
    tint = rng.integers(-10, 11, size=3)
    img = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), tuple(int(base + t) for t in tint))
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 3)
        cx = (_CELL_CENTRES[col] + rng.uniform(-_JITTER, _JITTER)) * s
        cy = (_CELL_CENTRES[row] + rng.uniform(-_JITTER, _JITTER)) * s
        lo, hi = SIZES[obj.size]
        r = rng.uniform(lo, hi) * s
        colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[obj.colour])
        angle = rng.uniform(-0.25, 0.25)
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r, angle), fill=colour)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    noise = rng.normal(0, 8, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def check_calib_count(n: int, option: str = "--calib-samples") -> None:
    """Refuse more shapes-world calibration pairs than its calibration split holds, in one line, before any work."""
    start, stop = SPLITS["calib"]
    if n > stop - start:
        raise UserError(f"{option} {n}: the shapes world holds {stop - start} calibration pairs (a JSONL "
                        "--calib gives as many as it has lines)")


def split_seeds(split: str, n: int, offset: int = 0) -> range:
    """The first `n` seeds of a split (after `offset`)."""
    start, stop = SPLITS[split]
    if start + offset + n > stop:
        raise ValueError(f"split {split!r} holds {stop - start} seeds; asked for {offset + n}")
    return range(start + offset, start + offset + n)


def vocabulary() -> list[str]:
    """Every word a caption or prompt of this world can hold."""
    words = {"a", "an", "photo", "image", "of", "there", "is", "and", "object", "objects", "at", "the",
             "in", "among", "left", "right", "above", "below", ":", "."}
    words |= set(SHAPES) | set(COLOURS) | set(SIZES) | set(_COUNT_WORDS)
    for p in POSITIONS:
        words |= set(p.split())
    return sorted(words)
