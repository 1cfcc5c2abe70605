"""Evaluation sets: the shapes-world suite, image-caption JSONL pairs, image folders.

An `EvalSet` holds raw data (PIL images or image paths, class prompts,
captions); `mfdeploy.eval.prepare` turns it into model inputs with a model's
own image processor and tokenizer.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mfdeploy.data import world
from mfdeploy.data.pairs import load_image_folder, load_pairs
from mfdeploy.errors import UserError

DEFAULT_TEMPLATE = "a photo of a {}."
RETRIEVAL_OFFSET = 100_000  # retrieval scenes start here in the eval seed range, past the attribute scenes
N_IMAGES = 1000
N_RETRIEVAL = 1000


@dataclass(frozen=True)
class ClassTask:
    """A zero-shot classification task over the images of an `EvalSet`."""

    classes: tuple[str, ...]
    prompts: tuple[str, ...]  # one prompt per class
    labels: tuple[int, ...]  # true class index of every image of the set


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Raw evaluation data: classification images shared by every task, and retrieval pairs.

    Retrieval images and captions are unique; `pairs` links them (several
    captions per image, or one caption shared by several images, are fine).
    """

    kind: str  # "shapes" | "jsonl" | "folder"
    description: str
    key: tuple  # identifies the content, for the preprocessing cache
    origin: str = ""  # file or folder named in errors about its images
    images: tuple[Image.Image | Path, ...] = ()
    tasks: Mapping[str, ClassTask] = field(default_factory=dict)
    retrieval_images: tuple[Image.Image | Path, ...] = ()
    captions: tuple[str, ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()  # (retrieval image index, caption index)

    def trivial_recalls(self, ks: tuple[int, ...] = (1, 5)) -> list[str]:
        """The retrieval metrics that are 100% whatever the model: recall@k over k or fewer candidates (i2t ranks
        the distinct captions, t2i the images), e.g. R@5 of a file of 3 pairs."""
        if not self.pairs:
            return []
        return [f"{name} R@{k}" for k in ks for name, n in (("i2t", len(self.captions)),
                                                          ("t2i", len(self.retrieval_images))) if n <= k]

    def counts(self) -> dict[str, int]:
        """How many images, classes and pairs the set holds."""
        return {
            "images": len(self.images),
            "tasks": len(self.tasks),
            "retrieval_images": len(self.retrieval_images),
            "retrieval_captions": len(self.captions),
            "retrieval_pairs": len(self.pairs),
        }


def shapes_suite(n_images: int = N_IMAGES, n_retrieval: int = N_RETRIEVAL) -> EvalSet:
    """The held-out shapes-world suite, rendered once per process and size.

    Attribute tasks (`world.TASKS`: shape, colour, size, position) share one
    set of single-object scenes, the first `n_images` seeds of the eval
    range; labels are the object's attributes and the prompts put each class
    name into the task's template. Retrieval uses `n_retrieval` scenes of one
    to three objects from a disjoint part of the eval range (offset
    `RETRIEVAL_OFFSET`), each paired with its full caption; identical
    captions are merged into one text with several matching images.

    Args:
        n_images: single-object scenes for the attribute tasks.
        n_retrieval: image-caption pairs for retrieval.
    """
    for flag, value in (("--images", n_images), ("--pairs", n_retrieval)):  # a Python caller's "8", 8.5 or True
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise UserError(f"{flag} {value!r}: must be a whole number, not {type(value).__name__}")
        if value <= 0:
            raise UserError(f"{flag} {value}: the shapes suite needs a positive number of images and pairs")
    return _shapes_suite(int(n_images), int(n_retrieval))  # one cache entry per size, however it is called


@functools.lru_cache(maxsize=4)
def _shapes_suite(n_images: int, n_retrieval: int) -> EvalSet:
    if n_images <= 0 or n_retrieval <= 0:
        raise UserError("the shapes suite needs a positive number of images and retrieval pairs")
    if n_images > RETRIEVAL_OFFSET:
        raise UserError(f"the shapes suite holds at most {RETRIEVAL_OFFSET} attribute images")
    scenes = [world.make_scene(s, n_objects=1) for s in world.split_seeds("eval", n_images)]
    tasks = {}
    for attr, (classes, template) in world.TASKS.items():
        labels = tuple(classes.index(getattr(sc.objects[0], attr)) for sc in scenes)
        tasks[attr] = ClassTask(tuple(classes), tuple(template.format(c) for c in classes), labels)
    r_scenes = [world.make_scene(s) for s in world.split_seeds("eval", n_retrieval, RETRIEVAL_OFFSET)]
    captions: dict[str, int] = {}
    pairs = []
    for i, sc in enumerate(r_scenes):
        pairs.append((i, captions.setdefault(sc.caption(), len(captions))))
    return EvalSet(
        kind="shapes",
        description=f"shapes world, eval split: {n_images} attribute images, {n_retrieval} retrieval pairs",
        key=("shapes", n_images, n_retrieval),
        images=tuple(sc.render() for sc in scenes),
        tasks=tasks,
        retrieval_images=tuple(sc.render() for sc in r_scenes),
        captions=tuple(captions),
        pairs=tuple(pairs),
    )


def pairs_set(path: str | Path) -> EvalSet:
    """Retrieval on a JSONL file of `{"image", "caption"}` pairs (images are read when prepared)."""
    path = Path(path)
    loaded = load_pairs(path)
    images: dict[Path, int] = {}
    captions: dict[str, int] = {}
    pairs = []
    for p in loaded:
        pairs.append((images.setdefault(p.image, len(images)), captions.setdefault(p.caption, len(captions))))
    stat = path.stat()
    # the images' stamps too, as an image folder's key holds them: an image replaced since (same JSONL) is read anew
    stamps = tuple((str(p), s.st_mtime_ns, s.st_size) for p in images for s in [p.stat()])
    return EvalSet(
        kind="jsonl",
        description=f"{path}: {len(loaded)} image-caption pairs",
        origin=str(path),
        key=("jsonl", str(path.resolve()), stat.st_mtime_ns, stat.st_size, stamps),
        retrieval_images=tuple(images),
        captions=tuple(captions),
        pairs=tuple(dict.fromkeys(pairs)),  # a repeated line counts once
    )


def folder_set(root: str | Path, template: str = DEFAULT_TEMPLATE) -> EvalSet:
    """Zero-shot classification on `root/<class>/<images>`; the task is named after the folder."""
    ds = load_image_folder(root, template)
    name = Path(root).resolve().name or "folder"
    images = tuple(p for p, _ in ds.items)
    task = ClassTask(ds.classes, tuple(ds.prompts()), tuple(label for _, label in ds.items))
    stamps = tuple((str(p), p.stat().st_mtime_ns) for p in images)
    return EvalSet(
        kind="folder",
        description=f"{root}: {len(images)} images in {len(ds.classes)} classes, prompt {template!r}",
        origin=str(root),
        key=("folder", str(Path(root).resolve()), template, stamps),
        images=images,
        tasks={name: task},
    )


def resolve_data(data: str | Path = "shapes", template: str | None = None, n_images: int | None = None,
                 n_retrieval: int | None = None, option: str = "--data") -> EvalSet:
    """Turn a `--data` value into an evaluation set.

    Args:
        data: "shapes" (the shapes-world suite), a JSONL file of image-caption
            pairs (retrieval), or an image folder with one sub-folder per
            class (zero-shot classification).
        template: prompt template of an image folder's classes (default
            "a photo of a {}.").
        n_images: attribute images of the shapes suite (None: N_IMAGES); refused for other data.
        n_retrieval: retrieval pairs of the shapes suite (None: N_RETRIEVAL); refused for other data.
        option: the option `data` came from, for messages (`mfdeploy tune` takes it as `--eval`).

    Raises:
        UserError: a missing path, a file that is not JSONL, a template given
            for data without classes, or a problem in the data itself.
    """
    text = str(data)
    if not text.strip():  # Path("") is the current folder, which would be read as a folder of classes
        raise UserError(f"{option} is empty: give 'shapes', a JSONL file or an image folder")
    if text == "shapes":
        if template is not None:
            raise UserError("--template applies to an image folder only (the shapes tasks bring their own prompts)")
        return shapes_suite(N_IMAGES if n_images is None else n_images,
                            N_RETRIEVAL if n_retrieval is None else n_retrieval)
    for flag, value in (("--images", n_images), ("--pairs", n_retrieval)):  # they would be ignored in silence
        if value is not None:
            raise UserError(f"{flag} applies to the shapes suite only; {option} {text} is used whole")
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"{option} {text}: no such file or folder (expected 'shapes', a JSONL file or an image folder)")
    if path.is_dir():
        return folder_set(path, DEFAULT_TEMPLATE if template is None else template)
    if path.suffix.lower() != ".jsonl":
        raise UserError(f"{option} {text}: unknown kind of data (expected 'shapes', a .jsonl file of image-caption "
                        "pairs, or an image folder)")
    if template is not None:
        raise UserError("--template applies to an image folder only (a JSONL file is evaluated by retrieval)")
    return pairs_set(path)
