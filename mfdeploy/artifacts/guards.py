"""What an output path may not be: the current directory or above it, home, the root, or the inputs of the command
that writes it; and the folders later commands add to an output (`check_out_dir`, `foreign_files` in `io`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mfdeploy.artifacts.layout import BUILD_MANIFEST, ENGINES_DENSE_DIR, ENGINES_DIR
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


__all__ = ["check_sources", "here_or_above", "later_dirs", "protected", "some"]
