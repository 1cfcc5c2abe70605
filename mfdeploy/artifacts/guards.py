"""What an output path may not be: the current directory or above it, home, the root, or the inputs of the command
that writes it; and the folders later commands add to an output (`check_out_dir`, `foreign_files` in `io`)."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from pathlib import Path

from mfdeploy.artifacts.layout import ADDED_LATER, BUILD_MANIFEST, ENGINES_DENSE_DIR, ENGINES_DIR, FILE_LIST, MANIFESTS
from mfdeploy.errors import UserError


def here_or_above(path: Path) -> bool:
    """Whether `path` is the current directory or one of its parents (`''` and `.` included)."""
    real, cwd = path.resolve(), Path.cwd().resolve()
    return real == cwd or real in cwd.parents


def protected(path: Path) -> str | None:
    """Why `path` may never be replaced, or None: the current directory, its ancestors, home, the root."""
    real = path.resolve()
    if here_or_above(path):
        return "it is the current directory or one of its parents"
    if real == Path.home().resolve():
        return "it is your home directory"
    if real == Path(real.anchor):
        return "it is the filesystem root"
    return None


def _read_list(listing: Path, prefix: str = "") -> set[str]:
    return {prefix + line for line in listing.read_text(encoding="utf-8").splitlines() if line} | {prefix + FILE_LIST}


def listed_files(out: Path) -> set[str] | None:
    """The files an mfdeploy output directory was created with (relative paths), None if it is not one.

    Output directories mfdeploy wrote inside it (e.g. `mfdeploy quantize BUILD --out BUILD/q`) count too.
    """
    known = _own_files(out)
    if known is not None:
        for listing in out.rglob(f"*/{FILE_LIST}"):
            known |= _read_list(listing, listing.parent.relative_to(out).as_posix() + "/")
    return known


def _own_files(out: Path) -> set[str] | None:
    listing = out / FILE_LIST
    if listing.is_file():
        return _read_list(listing)
    manifests = [out / name for name in MANIFESTS if (out / name).is_file()]
    if not manifests:
        return None
    # Written before the file list existed: trust what the manifests themselves list.
    known = {m.name for m in manifests}
    for manifest in manifests:
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("artifacts", "files"):
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                known |= set(data[key])
    return known


def check_file_sources(target: Path, sources: Iterable[object], option: str = "--json") -> None:
    """Refuse a file to write that is one of `sources` (paths the command reads) or inside one, unless the source
    is an mfdeploy output and the file is none mfdeploy wrote or adds there later (a manifest, a tower, a report):
    `bench BUILD --json BUILD/rows.json` is taken, `BUILD/build.json` and `CHECKPOINT/anything.json` are not.
    """
    real = Path(target).expanduser().resolve()
    for source in sources:
        if not isinstance(source, (str, Path)) or not Path(source).exists():
            continue
        src = Path(source).resolve()
        if real == src:
            raise UserError(f"{option} {target} would replace {source}, which this command reads: choose another "
                            "file")
        if src not in real.parents:
            continue
        rel = real.relative_to(src).as_posix()
        known = listed_files(src)
        if known is None:  # not an mfdeploy output (a checkpoint, a data folder): any file of it may be read
            raise UserError(f"{option} {target} is inside {source}, which this command reads: choose a file "
                            "outside it")
        if rel in known or any(fnmatch.fnmatchcase(real.name, g) for g in ADDED_LATER):
            raise UserError(f"{option} {target} would replace {rel} of {source}, which this command reads or "
                            "writes: choose a file outside it")


def check_sources(out: Path, sources: Iterable[object]) -> None:
    """Refuse an `out` that is one of `sources` (paths the command reads), holds one, or, existing, sits inside one."""
    real_out = out.resolve()
    for source in sources:
        if not isinstance(source, (str, Path)) or not Path(source).exists():
            continue
        real = Path(source).resolve()
        if real_out == real or real_out in real.parents:
            raise UserError(f"--out {out} would replace {source}, which this command reads: choose another --out")
        if real in real_out.parents and (out.exists() or out.is_symlink()):
            raise UserError(f"--out {out} is inside {source}, which this command reads: choose a folder outside it")


def some(paths: list[str], shown: int = 5) -> str:
    """The first `shown` of `paths` for a one-line message, and how many more there are."""
    return ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def later_dirs(out: Path) -> set[str]:
    """Folders of `out` that later commands write into: a build's engine folders (`mfdeploy engine BUILD`, or the
    trtexec commands a CPU build prints)."""
    return {ENGINES_DIR, ENGINES_DENSE_DIR} if (Path(out) / BUILD_MANIFEST).is_file() else set()


__all__ = ["check_file_sources", "check_sources", "here_or_above", "later_dirs", "listed_files", "protected", "some"]
