"""Atomic outputs: build a directory or file in a temporary place, rename it into place on success."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mfdeploy.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_out_dir(out: Path, force: bool) -> None:
    """An existing output directory is an error unless `force`."""
    if out.exists() and not force:
        raise UserError(f"{out} already exists: pass --force to overwrite it")
    if not out.parent.exists():
        raise UserError(f"{out.parent}: parent directory does not exist")


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; it replaces `out` only if the block succeeds.

    On any exception (or Ctrl-C) the temporary directory is removed and `out`
    is left as it was: never a half-written output.
    """
    out = Path(out)
    check_out_dir(out, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; outputs are shared artifacts
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_file(path: Path, write: Callable[[Path], None]) -> Path:
    """Create `path` through `write(tmp)` on a temporary sibling, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    atomic_file(path, lambda p: p.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
