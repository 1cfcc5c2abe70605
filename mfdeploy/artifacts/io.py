"""Atomic outputs: build a directory or file in a temporary place, rename it into place on success."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.guards import check_sources, here_or_above, later_dirs, listed_files, protected, some
from mfdeploy.artifacts.layout import ADDED_LATER, FILE_LIST, MANIFESTS, TEMP_OWNER
from mfdeploy.artifacts.tempdirs import aside_prefix, make_temp_dir, sweep, writer_alive
from mfdeploy.artifacts.writable import as_write_error, check_writable, make_parents, remove_empty
from mfdeploy.errors import WRITE_ERRNOS, UserError, errno_of, write_error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def foreign_files(out: Path) -> list[str] | None:
    """Files and folders under `out` that mfdeploy did not write (relative paths, sorted).

    Returns None when `out` is not an mfdeploy output directory at all (no file list, no manifest).
    """
    known = listed_files(out)
    if known is None:
        return None
    # a killed run's temporary folder inside it (`bench`'s `.bench.tmp-`, an engine's) is no file of the user's
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir() and not p.is_symlink())]:
        sweep(folder)
    known_dirs = {"."} | {str(Path(k).parent.as_posix()) for k in known}
    known_dirs |= later_dirs(out)
    foreign = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_dir() and not path.is_symlink():
            if rel not in known_dirs and not any(k.startswith(rel + "/") for k in known) and not any(path.iterdir()):
                foreign.append(rel + "/")  # an empty folder nobody listed, nor a later command (engines/) makes
            continue
        if rel in known or rel == TEMP_OWNER:  # the record a kill may leave in an output just put in place
            continue
        parent, name = str(Path(rel).parent.as_posix()), path.name
        if parent in known_dirs and any(fnmatch.fnmatchcase(name, g) for g in ADDED_LATER):
            continue  # e.g. bench.json in a build, engines/vision.plan beside the engines mfdeploy listed
        foreign.append(rel)
    return foreign


def check_out_dir(out: Path, force: bool, sources: Iterable[object] = ()) -> None:
    """Refuse an output path that exists, unless `force` and it is safe to replace.

    `--force` replaces only an empty directory or one mfdeploy wrote (it holds one of
    `MANIFESTS`) and that holds nothing else; never the current directory, one of its
    parents, the home directory, the root, a symlink or a file. Stale temporary folders of killed runs
    beside `out` are removed first (`tempdirs.sweep`), and a folder `out` cannot be written into fails here,
    before any work.

    `sources`: what the command reads (paths; anything else, such as a hub id or a loaded model, is skipped):
    `out` may not be one of them, hold one, or (when it exists) sit inside one: replacing it would destroy
    the input before, or while, it is read.

    Raises:
        UserError: one line saying why `out` cannot be used; nothing else is touched.
    """
    out = Path(out)
    if here_or_above(out):  # `--out .`, `..`, or `''` (which Path reads as "."): before "exists: pass --force"
        raise UserError(f"--out {out}: the current directory or one of its parents; name a new folder for the output")
    check_sources(out, sources)
    if not out.parent.exists():
        raise UserError(f"{out.parent}: parent directory does not exist")
    sweep(out.parent)  # first: a killed run's `.old-` folder may hold the previous `out`, put back here
    busy = writer_alive(out)
    if busy is not None:  # two runs into one --out: the later one would fail only at the end, its work lost
        raise UserError(f"{out}: another mfdeploy run is writing it now ({busy}); wait for it to end or choose "
                        "another --out (if no such run is alive, delete that folder)")
    check_writable(out.parent, out)
    if not (out.exists() or out.is_symlink()):
        return
    if not (out.is_dir() or out.is_symlink()):  # --force would be refused too: say what to do instead
        raise UserError(f"{out} exists and is a file, not a directory: choose another --out")
    if out.is_symlink():  # so would it be here, whatever the link points to (or if it points nowhere)
        raise UserError(f"{out} is a symbolic link: mfdeploy never writes through one nor replaces it; choose "
                        "another --out")
    if not force:
        raise UserError(f"{out} already exists: pass --force to replace it (only a directory mfdeploy wrote "
                        "is replaced)")
    why = protected(out)
    if why:
        raise UserError(f"--force will not replace {out}: {why}; choose another --out")
    if not any(out.iterdir()):
        return
    foreign = foreign_files(out)
    if foreign is None:
        raise UserError(f"--force will not replace {out}: mfdeploy did not write it (it holds none of "
                        f"{', '.join(MANIFESTS)}); choose another --out or empty it yourself")
    if foreign:
        raise UserError(f"--force will not replace {out}: it holds files mfdeploy did not write ({some(foreign)}); "
                        "move them out first")


def _publish(tmp: Path) -> None:
    """Give an output tree normal permissions and record its files in `FILE_LIST`."""
    mask = _umask()
    files = []
    for path in sorted(tmp.rglob("*")):
        if path.is_symlink() or path == tmp / TEMP_OWNER:
            continue
        # mkdtemp makes folders 0700 and safetensors writes 0600: outputs are shared artifacts
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
        if path.is_file():
            files.append(path.relative_to(tmp).as_posix())
    tmp.chmod(0o777 & ~mask)
    listing = tmp / FILE_LIST
    listing.write_text("".join(f + "\n" for f in [*files, FILE_LIST]), encoding="utf-8")
    listing.chmod(0o666 & ~mask)


class Terminated(BaseException):
    """Raised by the CLI's SIGTERM handler, so every `finally` (temporary outputs) runs as on Ctrl-C."""


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; it replaces `out` only if the block succeeds.

    On any exception, Ctrl-C or SIGTERM (`Terminated`) the temporary directory
    is removed and `out` is left as it was: never a half-written output.
    `out` is checked with `check_out_dir` before the block and again before
    it is replaced (it may have changed meanwhile). The folder records its
    owner (`tempdirs`), so one a SIGKILL leaves behind is removed by a later run.

    Raises:
        WriteError: the filesystem refused a write (full, read-only, no permission, not a folder): one line
            naming the path in `out` and the cause; nothing is left behind.
    """
    out = Path(out)
    check_out_dir(out, force)
    try:
        tmp = make_temp_dir(out.parent, f".{out.name}.tmp-")
    except OSError as e:
        raise write_error(out, e) from None
    try:
        try:
            yield tmp
            _publish(tmp)
            _put_in_place(tmp, out, force)
        except Exception as e:  # noqa: BLE001 - only filesystem failures are converted; the rest re-raised
            failure = as_write_error(e, out, tmp)
            if failure is None:
                raise
            raise failure from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _put_in_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished `tmp` to `out`; an existing `out` is moved aside first and back on failure.

    The owner record goes last, from `out`: until the rename a kill leaves a folder a later run can tell.
    """
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        (out / TEMP_OWNER).unlink(missing_ok=True)
        return
    check_out_dir(out, force)
    # move the old tree aside first, so that `out` is never missing nor half deleted; should this process
    # die before the new tree is in place, a later run's sweep puts the old one back (its `restore`)
    old = make_temp_dir(out.parent, aside_prefix(out.name), restore=out.name)
    try:
        os.replace(out, old / out.name)
    except BaseException:
        shutil.rmtree(old, ignore_errors=True)
        raise
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / out.name, out)  # should this fail too, `old` keeps it for the sweep to put back
        shutil.rmtree(old, ignore_errors=True)
        raise
    (out / TEMP_OWNER).unlink(missing_ok=True)
    shutil.rmtree(old, ignore_errors=True)


def atomic_file(path: Path, write: Callable[[Path], object]) -> Path:  # what `write` returns is ignored
    """Create `path` through `write(tmp)` on a temporary sibling, then rename: never a half-written file.

    `write` gets a file of the same name in a hidden temporary folder beside `path` (which records its owner,
    `tempdirs`); missing parent folders are created, and removed again should the write fail.

    Raises:
        WriteError: the filesystem refused a write: one line naming `path` and the cause; nothing is left.
    """
    path = Path(path)
    created: list[Path] = []
    tmp_dir: Path | None = None
    try:
        make_parents(path.parent, created)
        sweep(path.parent)
        tmp_dir = make_temp_dir(path.parent, f".{path.name}.tmp-")
        tmp = tmp_dir / path.name
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # a writer may make it 0600: outputs are shared artifacts
        os.replace(tmp, path)
    except BaseException as e:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        remove_empty(created)
        failure = write_error(path, e) if errno_of(e) in WRITE_ERRNOS else None
        if failure is None:
            raise
        raise failure from None
    finally:
        if tmp_dir is not None and tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def write_json(path: Path, data: Any, *, default: Callable[[Any], Any] | None = str,
               allow_nan: bool = True) -> Path:
    """Write `data` as indented JSON, atomically (temp file + rename); returns `path`.

    Args:
        path: the file to write.
        data: anything `json.dumps` takes.
        default: how to write values JSON has no type for (default `str`: paths, numpy scalars);
            None raises on them instead.
        allow_nan: False refuses NaN and infinities (results a user compares must be numbers).
    """
    text = json.dumps(data, indent=2, default=default, allow_nan=allow_nan) + "\n"
    return atomic_file(Path(path), lambda p: p.write_text(text, encoding="utf-8"))


def sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_records(root: Path, *, recursive: bool = True, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `root`, by path relative to it (POSIX separators).

    Args:
        root: the output directory.
        recursive: also files in sub-folders (False: only `root`'s own files).
        skip: relative paths to leave out (the manifest itself).
    """
    root = Path(root)
    skipped = set(skip)
    paths = root.rglob("*") if recursive else root.iterdir()
    out = {}
    for p in sorted(paths):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in skipped and p.name != TEMP_OWNER:  # the owner record goes before publishing
            out[rel] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return out
