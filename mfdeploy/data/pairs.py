"""Image-caption pairs from JSONL files and image folders for zero-shot classification."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mfdeploy.data.images import DEFAULT_MAX_PIXELS, load_rgb, open_checked
from mfdeploy.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Pair:
    """One image-caption pair; `image` is an absolute path."""

    image: Path
    caption: str
    line: int = 0  # its line in the JSONL file (0: not from a file)


def load_pairs(path: str | Path) -> list[Pair]:
    """Read a JSONL file of `{"image": path, "caption": text}` lines.

    Image paths are relative to the JSONL file. Every problem names the file
    and the line number; the images are checked to exist (not decoded) here.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: calibration/evaluation file does not exist")
    pairs: list[Pair] = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM (Windows editors) is not JSON
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{no}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{no}: expected an object with 'image' and 'caption'")
        for key in ("image", "caption"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise UserError(f"{path}:{no}: missing or empty '{key}'")
        image = (path.parent / row["image"]).resolve()
        if not image.is_file():
            raise UserError(f"{path}:{no}: image {row['image']} does not exist")
        pairs.append(Pair(image, row["caption"], no))
    if not pairs:
        raise UserError(f"{path}: no image-caption pairs in the file")
    return pairs


def check_images(path: Path, pairs: list[Pair]) -> None:
    """Open the header of each pair's image (format, size within the pixel limit), closing it again: an image
    that cannot be decoded is named with its FILE:LINE before any slow work, not when its batch comes."""
    for pair in pairs:
        open_checked(pair.image, f"{origin_of(path, pair)}: cannot read image {pair.image}").close()


def origin_of(path: Path, pair: Pair) -> str:
    """Where a pair came from, for an error message: FILE:LINE."""
    return f"{path}:{pair.line}" if pair.line else str(path)


def open_image(path: Path, origin: str = "", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file as RGB (`mfdeploy.data.images` rules and pixel limit), or fail in one line naming it."""
    where = f"{origin}: " if origin else ""
    return load_rgb(path, f"{where}cannot read image {path}", max_pixels)


@dataclass(frozen=True)
class FolderDataset:
    """Zero-shot classification data: one sub-folder per class, named after the class."""

    classes: tuple[str, ...]
    items: tuple[tuple[Path, int], ...]  # (image path, class index)
    template: str = "a photo of a {}."

    def prompts(self) -> list[str]:
        return [fill_template(self.template, c.replace("_", " ")) for c in self.classes]


def template_problem(template: object) -> str | None:
    """Why `template` cannot be a prompt template (None: it can): a string with exactly one `{}` for the label."""
    if not isinstance(template, str):
        return f"a prompt template is a string, not {type(template).__name__}"
    n = template.count("{}")
    if n != 1:
        return f"prompt template {template!r} has {'no' if n == 0 else n} '{{}}' for the class name (it needs one)"
    return None


def fill_template(template: str, label: str) -> str:
    """`template` with `label` in its `{}`; every other brace is text, as written (no `str.format` fields)."""
    return template.replace("{}", label, 1)


def load_image_folder(root: str | Path, template: str = "a photo of a {}.") -> FolderDataset:
    """Scan `root/<class>/*.png|jpg...` into a classification dataset."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: image folder does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(f"{root}: an image folder needs at least two class sub-folders")
    items: list[tuple[Path, int]] = []  # (image, class index)
    for i, c in enumerate(classes):
        files = sorted(f for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{root / c}: class folder holds no images")
        items.extend((f, i) for f in files)
    problem = template_problem(template)
    if problem:
        raise UserError(problem)
    return FolderDataset(tuple(classes), tuple(items), template)
