"""Save evaluation results: JSON written atomically, its target checked before a long evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mfdeploy.artifacts.guards import check_file_sources
from mfdeploy.artifacts.io import write_json
from mfdeploy.artifacts.writable import check_file_target
from mfdeploy.errors import UserError


def check_json_target(path: str | Path, sources: Iterable[object] = ()) -> Path:
    """Fail early (before a long evaluation) when a result cannot be written to `path`, or would replace one of
    `sources` (the model and data evaluated) or a file inside them."""
    path = Path(path).expanduser()
    check_file_sources(path, sources)
    if path.is_dir():
        raise UserError(f"--json {path}: is a directory (give a file name)")
    return check_file_target(path)  # tried, not read from permission bits: root, read-only mounts, /proc


def write_result(result: dict, path: str | Path) -> Path:
    """Write a result as indented JSON, atomically; NaN and values JSON has no type for are refused."""
    return write_json(check_json_target(path), result, default=None, allow_nan=False)
