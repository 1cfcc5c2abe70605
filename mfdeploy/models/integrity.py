"""sha256 records of the files mfdeploy writes, and the check that they were not changed since.

A prune directory's `prune.json` and a build directory's `build.json` carry
`artifacts`: `{relative path: {"sha256", "bytes"}}`. Whatever reads such a
directory checks the files it relies on against that map first, so a
truncated or edited file is named in one line instead of being used (or
failing deep inside a loader).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.io import file_records, sha256
from mfdeploy.artifacts.layout import SOURCE_MANIFESTS
from mfdeploy.errors import UserError

MANIFESTS = SOURCE_MANIFESTS  # build.json first: written last, it covers the whole directory
# keys every version of these manifests has held, hashes or not (those before hashes included)
_ALWAYS = dict.fromkeys(SOURCE_MANIFESTS, ("model",))


def artifact_records(root: Path, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `root`, by path relative to it (POSIX separators).

    Args:
        root: the output directory.
        skip: relative paths to leave out (the manifest itself).
    """
    return file_records(root, skip=skip)


def manifest_artifacts(root: Path, manifests: Iterable[str] = MANIFESTS,
                       ) -> tuple[Path, dict[str, dict[str, Any]]] | None:
    """The first of `manifests` in `root` that records hashes, and its `{path: record}` entries with a sha256
    (a build's or prune's `artifacts`, an export's `files`).

    None when `root` holds no manifest, or only one written before mfdeploy recorded hashes.

    Raises:
        UserError: a manifest that is not JSON, or not the shape mfdeploy writes (an edit that would otherwise
            turn every check off).
    """
    for name in manifests:
        manifest = Path(root) / name
        if not manifest.is_file():
            continue
        try:
            data = json.loads(manifest.read_text())
            key = "files" if "artifacts" not in data and "files" in data else "artifacts"
            arts = data.get(key)
            if arts is not None and not isinstance(arts, dict):
                raise ValueError(f"its {key!r} is a {type(arts).__name__}, not a map of files")
            missing = [k for k in _ALWAYS.get(name, ()) if k not in data]
            if missing:  # `{}`, or another file under this name: it would turn every check off
                raise ValueError(f"no {' or '.join(repr(k) for k in missing)}, which every {name} mfdeploy "
                                 "wrote holds")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError, ValueError) as e:
            why = e if not isinstance(e, (TypeError, AttributeError)) else "not a JSON object"
            raise UserError(f"{manifest}: unreadable manifest ({why}); was it edited? Rerun the command "
                            "that wrote this directory") from None
        if isinstance(arts, dict):
            hashed = {k: v for k, v in arts.items() if isinstance(v, dict) and "sha256" in v}
            if hashed:
                return manifest, hashed
    return None


def verify_artifacts(root: Path, prefixes: Iterable[str], manifests: Iterable[str] = MANIFESTS) -> list[str]:
    """Check the recorded files of `root` whose path starts with one of `prefixes` (each hashed once).

    Args:
        root: a prune or build directory (or, with `manifests=("export.json",)`, an export directory).
        prefixes: relative path prefixes, e.g. `("pruned/", "masks.safetensors")`; "" for every recorded file.
        manifests: the manifests that may record the hashes, the first found deciding.

    Returns:
        The relative paths checked (empty when the directory records no hashes).

    Raises:
        UserError: a recorded file is missing, or its size or sha256 differs from the manifest.
    """
    found = manifest_artifacts(root, manifests)
    if found is None:
        return []
    manifest, arts = found
    prefixes = tuple(prefixes)
    checked = []
    for rel, rec in arts.items():
        if not rel.startswith(prefixes):
            continue
        path = Path(root) / rel
        if not path.is_file():
            raise UserError(f"{path}: missing, but {manifest.name} lists it: the directory is incomplete; "
                            "rerun the command that wrote it")
        size = path.stat().st_size
        wrong_size = size != rec.get("bytes", size)
        # the size check first: a truncated multi-GB checkpoint is caught without reading it
        if wrong_size or sha256(path) != rec["sha256"]:
            detail = f" ({size} bytes, {manifest.name} records {rec['bytes']})" if wrong_size else ""
            raise UserError(f"{path}: does not match the sha256 in {manifest}{detail}: it was modified or "
                            "corrupted after mfdeploy wrote it; rerun the command that wrote it")
        checked.append(rel)
    return checked
