"""Where a write can happen, said before the work, and the one line a refused write ends in.

A filesystem refuses a write for a few reasons: the place is no folder, is missing, is read-only or virtual
(/proc), the user may not write there, or the disk is full. Each becomes `errors.WriteError` (`cannot write
PATH: CAUSE (errno N)`) naming the path the user asked for, never a temporary one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

from mfdeploy.errors import WRITE_ERRNOS, UserError, WriteError, errno_of, write_error


def check_writable(folder: Path, target: Path | None = None) -> None:
    """Fail now, not after the work, when nothing can be created in `folder`.

    Tries it (a folder made and removed at once): permission bits say nothing of what root may do, of
    read-only mounts or of /proc.

    Raises:
        WriteError: `cannot write TARGET: CAUSE (errno N)`, TARGET defaulting to `folder`.
    """
    folder = Path(folder)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mfdeploy-probe-", dir=folder))
    except OSError as e:
        cause = e if folder.is_dir() or not folder.exists() else NotADirectoryError(
            errno.ENOTDIR, f"{folder} is not a directory")
        raise write_error(target if target is not None else folder, cause) from None


def check_file_target(path: Path) -> Path:
    """Fail now when the file `path` could not be written later (`atomic_file` creates missing parents)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory (give a file name)")
    check_folder_target(path.parent, path)
    return path


def check_folder_target(folder: Path, shown: Path | None = None) -> None:
    """Fail now when files could not be written into `folder`, made with its missing parents if need be.

    Args:
        folder: where the files will go.
        shown: the path the error names (default `folder`).
    """
    existing = Path(folder)
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent  # the folder that will hold the ones created
    check_writable(existing, shown if shown is not None else Path(folder))


def as_write_error(e: BaseException, out: Path, tmp: Path) -> WriteError | None:
    """The one-line error of a failed write of `out` built in `tmp`, or None when `e` is no write failure.

    A path inside `tmp` is shown as the path it would have had in `out`: the temporary name means nothing
    to the user, and is gone once the error is shown.
    """
    code = errno_of(e)
    if code is None:
        return None
    # a copy's error names its source and its destination (`filename2`): the destination is the one written
    named = [getattr(e, "path", None)] if isinstance(e, WriteError) else [getattr(e, "filename2", None),
                                                                          getattr(e, "filename", None)]
    paths: list[Any] = [p for p in named if p is not None]
    if not paths:
        return write_error(out, e) if code in WRITE_ERRNOS else None
    inside = Path(os.path.abspath(tmp))
    for raw in paths:
        where = Path(os.path.abspath(os.fsdecode(raw)))
        if where == inside or inside in where.parents:
            shown = out / where.relative_to(inside)
        elif where == Path(os.path.abspath(out)) or (where.parent == Path(os.path.abspath(out.parent))
                                                     and where.name.startswith(f".{out.name}.")):
            shown = out  # `out` itself, or a temporary sibling (moving the old tree aside)
        else:
            continue
        return WriteError(shown, code, e.why) if isinstance(e, WriteError) else write_error(shown, e)
    return None  # another file (an input that cannot be read): the CLI names it as it is


def make_parents(folder: Path, created: list[Path]) -> None:
    """`mkdir -p folder`, appending each folder it creates to `created` as it goes (outermost first)."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)


def remove_empty(created: list[Path]) -> None:
    """Remove the folders `make_parents` created, innermost first, as long as they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()  # only an empty one: never what another process put there meanwhile
        except OSError:
            return
