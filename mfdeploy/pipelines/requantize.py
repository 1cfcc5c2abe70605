"""`mfdeploy quantize BUILD --in-place`: a build's `onnx_int8/` made again (another scheme, other calibration pairs,
or for the first time), without pruning and exporting again.

The new towers go through the gates `mfdeploy build --int8` puts them
through (against the fp32 ONNX towers, then against the PyTorch model of
`pruned/`); the build's INT8 evaluation rows are measured again on the data
build.json names. The new build is assembled beside the old one: every other
file is hard-linked (copied where the filesystem cannot link), `onnx_int8/` is
written fresh, then report.md and build.json (whose sha256 map now covers the
new towers, so `mfdeploy triton` accepts them). It replaces the old build in
one rename (`atomic_dir`): a failure, Ctrl-C or kill leaves the old build as
it was. `onnx_qdq/` (TensorRT's QDQ towers) is left alone: the build's engines
were made from it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.guards import protected, some
from mfdeploy.artifacts.io import atomic_dir, foreign_files
from mfdeploy.artifacts.layout import (
    BUILD_MANIFEST,
    FILE_LIST,
    ONNX_DIR,
    ONNX_INT8_DIR,
    REPORT_FILE,
    TEMP_OWNER,
    is_build,
)
from mfdeploy.errors import UserError
from mfdeploy.pipelines.gate import int8_torch_gate
from mfdeploy.pipelines.report import int8_parity, scores, write_manifest
from mfdeploy.quantize.run import QuantizeConfig, quantize_towers, validate

REWRITTEN = {ONNX_INT8_DIR, BUILD_MANIFEST, REPORT_FILE, FILE_LIST, TEMP_OWNER}  # made anew, not carried over


def check_in_place(build: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """Refuse, in one line and before any work, what `--in-place` cannot do; returns the build's manifest."""
    if cfg.target != "ort" or cfg.mode != "int8":  # before validate: what fp8 needs of ONNX Runtime is moot here
        raise UserError("--in-place rewrites a build's onnx_int8/ (--target ort, --mode int8); onnx_qdq/ is what "
                        "the build's TensorRT engines were made from: for other QDQ towers, build again with --int8")
    validate(cfg)
    build = Path(build)
    if build.is_symlink():
        raise UserError(f"--in-place will not replace {build}: it is a symbolic link; pass the build directory it "
                        f"points to ({build.resolve()})")
    why = protected(build)
    if why:
        raise UserError(f"--in-place will not replace {build}: {why} (the build is replaced by a rename); run it "
                        "from outside the build")
    if not build.is_dir() or not is_build(build):
        raise UserError(f"{build}: not a build directory (no {BUILD_MANIFEST}); --in-place rewrites the onnx_int8/ "
                        "of a `mfdeploy build` output; for an export directory, write the towers elsewhere with --out")
    try:
        manifest = json.loads((build / BUILD_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{build / BUILD_MANIFEST}: unreadable ({e}); rebuild with `mfdeploy build`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parity"), dict):
        raise UserError(f"{build / BUILD_MANIFEST}: not a build manifest mfdeploy wrote; rebuild with `mfdeploy build`")
    foreign = foreign_files(build) or []
    if foreign:
        raise UserError(f"--in-place will not rewrite {build}: it holds files mfdeploy did not write "
                        f"({some(foreign)}); move them out first")
    return manifest


def requantize_build(build: Path, cfg: QuantizeConfig, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Quantize `build`'s `onnx/` again into its `onnx_int8/`, gated; build.json and report.md updated (module doc).

    Returns:
        The new build manifest.

    Raises:
        UserError: an option `--in-place` cannot take, a directory that is not a build (or holds files
            mfdeploy did not write), a recorded file that changed since the build, or a tower under a gate;
            the build is then left as it was.
    """
    from mfdeploy.extras import require
    from mfdeploy.models import load
    from mfdeploy.models.integrity import verify_artifacts
    from mfdeploy.quantize.build import summarize

    build = Path(build).expanduser()  # `--in-place` takes no `=`; `quantize ~/b` from Python, or quoted, is a path
    manifest = check_in_place(build, cfg)
    require("quantize", target=cfg.target)
    # every file carried over, not only what the new towers are made from (onnx/, pruned/): build.json records
    # them again, so a file damaged since the build would pass every later check
    kept = sorted(p.name + ("/" if p.is_dir() else "") for p in build.iterdir() if p.name not in REWRITTEN)
    verify_artifacts(build, kept)
    adapter = load(build)
    start = time.perf_counter()
    with atomic_dir(build, force=True) as tmp:
        _link_tree(build, tmp)
        (tmp / ONNX_INT8_DIR).mkdir()
        record = quantize_towers(adapter, build / ONNX_DIR, tmp / ONNX_INT8_DIR, cfg, warn)
        summary = summarize(record)
        summary["vs_torch"] = int8_torch_gate(adapter, tmp / ONNX_INT8_DIR)
        manifest["quantize"] = {**(manifest.get("quantize") or {}), ONNX_INT8_DIR: summary}
        manifest["parity"].update(int8_parity(manifest["quantize"]))
        _evaluate_again(manifest, adapter, tmp / ONNX_INT8_DIR, warn)
        seconds = round(time.perf_counter() - start, 2)
        manifest["requantized"] = [*(manifest.get("requantized") or []), {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "folder": ONNX_INT8_DIR,
            "scheme": cfg.scheme, "towers": {t: r.get("scheme") for t, r in summary["towers"].items()},
            "calibration": summary["calibration"], "seconds": seconds}]
        write_manifest(tmp, manifest, build)
    return manifest


def _link_tree(src: Path, dst: Path) -> None:
    """Every file of `src` but those made anew (`REWRITTEN`) into `dst`, hard-linked where the filesystem allows."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in REWRITTEN:
            continue
        target = dst / rel
        if path.is_dir() and not path.is_symlink():
            target.mkdir(exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target, follow_symlinks=False)
        except OSError:  # no hard links here (another filesystem type): a copy
            shutil.copy2(path, target, follow_symlinks=False)


def _evaluate_again(manifest: dict[str, Any], adapter: Any, folder: Path,
                    warn: Callable[[str], None] | None) -> None:
    """The build's INT8 evaluation rows, measured again on the new towers (none when the build evaluated none)."""
    from mfdeploy.eval import retention
    from mfdeploy.quantize.build import evaluate_int8

    ev = manifest.get("evaluation")
    if not ev:
        return
    try:
        result = evaluate_int8(adapter, folder, ev["data"])
    except UserError as e:  # the data the build evaluated on is gone (a JSONL file moved): say so, keep going
        ev.pop("int8", None)
        ev.pop("retention_int8", None)
        if warn is not None:
            warn(f"the INT8 rows of build.json's evaluation were dropped: {e}")
        return
    ev["int8"] = scores(result)
    ev["retention_int8"] = retention(ev["int8"], ev["dense"])


__all__ = ["check_in_place", "requantize_build"]
