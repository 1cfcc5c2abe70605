"""Image-caption pairs from JSONL files and image folders for zero-shot classification."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mfdeploy.data.images import DEFAULT_MAX_PIXELS, load_rgb, open_checked
from mfdeploy.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_decoded: set[tuple[str, int, int]] = set()  # (path, mtime ns, size) of the images `check_images` decoded whole


@dataclass(frozen=True)
class Pair:
    """One image-caption pair; `image` is an absolute path."""

    image: Path
    caption: str
    line: int = 0  # its line in the JSONL file (0: not from a file)


def load_pairs(path: str | Path) -> list[Pair]:
    """Read a JSONL file of `{"image": path, "caption": text}` lines.

    Image paths are relative to the JSONL file's folder (or absolute). `caption`
    may also be a list of captions of the image (COCO's five): one pair each,
    in order. Every problem names the file and the line number; the images are
    checked to exist (not decoded) here.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: calibration/evaluation file does not exist")
    pairs: list[Pair] = []
    try:
        raw = path.read_bytes()
        # a BOM (Windows editors) is not JSON; UTF-16 is what Windows PowerShell 5's `>` writes
        text = raw.decode("utf-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); save it as UTF-8") from None
    # JSON Lines ends a line at "\n" only: str.splitlines() would also cut a caption at a raw U+2028, U+0085 or
    # form feed, which JSON allows inside a string (json.dumps(..., ensure_ascii=False) writes U+2028 raw)
    lines = text.split("\n")
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{no}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{no}: expected an object with 'image' and 'caption'")
        where = f"{path}:{no}"
        name = _texts(row, "image", where)[0]
        captions = _texts(row, "caption", where, several=True)
        given = path.parent / Path(name).expanduser()  # an absolute (or ~) path stays as it is
        if given.is_symlink() and not given.exists():
            raise UserError(f"{where}: {broken_link(given)}")
        image = given.resolve()
        if not image.is_file():
            raise UserError(_missing_image(where, path, name, image))
        pairs.extend(Pair(image, caption, no) for caption in captions)
    if not pairs:
        raise UserError(f"{path}: no image-caption pairs in the file")
    return pairs


_JSON_KINDS = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}


def _texts(row: dict, key: str, where: str, several: bool = False) -> list[str]:
    """The non-empty text(s) of `row[key]`: one string, or with `several` a list of them (COCO's several captions
    of one image: one pair each); anything else is refused in one line naming what it is."""
    value = row.get(key)
    if several and isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return value
    if isinstance(value, str) and value.strip():
        return [value]
    if value is None or isinstance(value, str):
        has = f" (the line has {', '.join(repr(k) for k in row)})" if key not in row and row else ""
        raise UserError(f"{where}: missing or empty '{key}'{has}")
    if several and isinstance(value, list):
        raise UserError(f"{where}: '{key}' is a list, and each of its items must be a non-empty string (one pair "
                        "per caption)")
    kind = _JSON_KINDS.get(type(value), type(value).__name__)
    expected = "a string, or a list of strings" if several else "a string (the image file's path)"
    raise UserError(f"{where}: '{key}' is {kind} ({json.dumps(value)[:40]}); expected {expected}")


def _missing_image(where: str, path: Path, name: str, looked: Path) -> str:
    """The refusal of a pair whose image is not a file; a relative path is read from the JSONL file's folder, which
    the message says (with the fix) when that folder is not the current one."""
    what = "is not a file" if looked.exists() else "does not exist"
    if Path(name).expanduser().is_absolute() or path.parent.resolve() == Path.cwd().resolve():
        return f"{where}: image {name} {what}"
    found = " (it exists from the current folder, not from the file's)" if Path(name).is_file() else ""
    return (f"{where}: image {name} {what}: relative image paths are read from the JSONL file's folder, so this is "
            f"{looked}{found}; write paths relative to {path.parent}/ or absolute")


def broken_link(link: Path) -> str:
    """What is wrong with a symbolic link whose target does not exist (the link, where it points, the fix): a
    raw `No such file or directory` would name the link alone, which `ls` shows as there."""
    target = os.readlink(link)
    full = "" if os.path.isabs(target) else f" (that is, {os.path.abspath(link.parent / target)})"
    return f"{link} is a broken symbolic link to {target}{full}, which does not exist: restore it or remove the link"


def check_images(path: Path, pairs: list[Pair], decode: bool = False) -> None:
    """Open the header of each pair's image (format, size within the pixel limit), closing it again: an image
    that cannot be decoded is named with its FILE:LINE before any slow work, not when its batch comes.

    `decode`: decode every pixel too (a truncated file has a good header), for a command that reads the images
    (prune, quantize, tune), so that one that does not decode fails before the model loads, not mid-calibration.
    An image that decoded is not decoded again while its file is unchanged (`_decoded`): a tune's trials, and a
    build's prune and quantize stages, check the same files."""
    seen: set[Path] = set()
    for pair in pairs:
        if pair.image in seen:  # an image with several captions: read once, named by its first line
            continue
        seen.add(pair.image)
        where = f"{origin_of(path, pair)}: cannot read image {pair.image}"
        if not decode:
            open_checked(pair.image, where).close()
            continue
        stat = pair.image.stat()
        stamp = (str(pair.image), stat.st_mtime_ns, stat.st_size)
        if stamp not in _decoded:
            load_rgb(pair.image, where).close()
            _decoded.add(stamp)


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


def class_images(folder: Path) -> list[Path]:
    """The image files of a class folder, in its sub-folders too (as torchvision's `ImageFolder` finds them), sorted.

    Hidden files and folders are left out, as hidden class folders are: `.DS_Store`, the `._photo.jpg` that macOS
    writes beside each file on a non-Mac disk (not an image, though named like one), `.thumbnails/`.
    """
    found: list[Path] = []
    seen: set[Path] = set()  # folders walked, by real path: a symbolic link back up the tree is walked once
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = Path(top).resolve()
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if n.startswith("."):
                continue
            suffix, file = Path(n).suffix.lower(), Path(top) / n
            if (suffix in IMAGE_SUFFIXES or not suffix) and file.is_symlink() and not file.exists():
                raise UserError(broken_link(file))  # an image, or a folder of them (os.walk lists it as a file)
            if suffix in IMAGE_SUFFIXES:
                found.append(file)
    return sorted(found)


def load_image_folder(root: str | Path, template: str = "a photo of a {}.") -> FolderDataset:
    """Scan `root/<class>/**/*.png|jpg...` into a classification dataset (`class_images` says which files count)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: image folder does not exist")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    for p in entries:  # a class folder on a disk that is not mounted: named, not left out in silence
        if p.is_symlink() and not p.exists():
            raise UserError(broken_link(p))
    classes = sorted(p.name for p in entries if p.is_dir())
    if len(classes) < 2:
        raise UserError(f"{root}: an image folder needs at least two class sub-folders")
    items: list[tuple[Path, int]] = []  # (image, class index)
    for i, c in enumerate(classes):
        files = class_images(root / c)
        if not files:
            raise UserError(f"{root / c}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        items.extend((f, i) for f in files)
    problem = template_problem(template)
    if problem:
        raise UserError(problem)
    _check_distinct_labels(root, classes, template)
    return FolderDataset(tuple(classes), tuple(items), template)


def _check_distinct_labels(root: Path, classes: list[str], template: str) -> None:
    """Refuse two class folders that give one prompt (`red_car` and `red car`: `_` reads as a space). Their class
    embeddings would be the same vector, so every image of the later class would be scored as the earlier one and
    the accuracy would be wrong, not merely lower: a warning would leave a number that means nothing."""
    first: dict[str, str] = {}
    for c in classes:
        label = c.replace("_", " ")
        if label in first:
            raise UserError(f"{root / first[label]} and {root / c}: two class folders with one prompt "
                            f"({fill_template(template, label)!r}, as '_' reads as a space), which zero-shot "
                            "classification cannot tell apart: merge them, or rename one")
        first[label] = c
