"""The export pipeline (`mfdeploy export`, `mfdeploy.export(...)`): load a model, export both towers, prove
parity, write `export.json`, atomically.

Everything is written into a temporary sibling of the output directory,
which is renamed into place only after the parity check passed and the
manifest is written: a failed export leaves nothing behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfdeploy._version import __version__
from mfdeploy.artifacts.io import atomic_dir, check_out_dir, file_records, write_json
from mfdeploy.artifacts.layout import EXPORT_MANIFEST
from mfdeploy.errors import UserError
from mfdeploy.exporting.onnx_export import export_towers
from mfdeploy.exporting.parity import MIN_COSINE
from mfdeploy.exporting.spec import MIN_OPSET, check_opset
from mfdeploy.models.base import Adapter
from mfdeploy.pipelines.gate import parity_gate
from mfdeploy.platform import package_versions

_VERSIONS = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "polygraphy", "tensorrt",
             "nvidia-modelopt")


def versions() -> dict[str, str | None]:
    """Versions of the packages an export depends on (None: not installed)."""
    return package_versions(_VERSIONS)


def _loadable(source: str) -> str:
    """The adapter's source as serve, quantize and eval load it again from any folder: a local checkpoint by its
    absolute path (a model the Python API was handed, loaded with `from_pretrained("ckpt")`, names `ckpt`)."""
    local = Path(source).expanduser()
    return str(local.resolve()) if source and local.is_dir() else source


def export_model(source: str | Path | Adapter | None, out: Path, opset: int = MIN_OPSET, force: bool = False,
                 external_data: bool | None = None, n_parity: int = 16, exporter: str = "torchscript",
                 min_cosine: float = MIN_COSINE, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export a model (hub id, checkpoint or prune/build directory) to `out` and check it.

    Args:
        source: anything `mfdeploy.models.load` accepts (None: the bundled model), or a loaded Adapter.
        out: output directory; it must not exist unless `force`.
        opset: ONNX opset (>= 17).
        force: replace an existing `out`.
        external_data: weights in `.onnx.data` files (None: only for models near 2 GiB).
        n_parity: images and captions of the parity check.
        exporter: "torchscript" or "dynamo" (see `export_towers`).
        min_cosine: parity threshold per tower.
        on_step: called with a short description before each long step (progress display).

    Returns:
        The manifest written to `out/export.json`.

    Raises:
        UserError: bad input (path, opset, existing output) or failed parity; `out` is untouched.
    """
    from mfdeploy.models import load

    step = on_step or (lambda _msg: None)
    out = Path(out)
    # Check everything the user controls before the slow steps, so mistakes fail fast.
    check_opset(opset)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    check_out_dir(out, force, sources=(source,))
    step("loading model")
    adapter = source if isinstance(source, Adapter) else load(source)
    timings: dict[str, float] = {}
    with atomic_dir(out, force) as tmp:
        step("exporting towers to ONNX")
        start = time.perf_counter()
        exported = export_towers(adapter, tmp, opset=opset, external_data=external_data, exporter=exporter)
        timings["export_s"] = round(time.perf_counter() - start, 2)
        step("checking parity with PyTorch (ONNX Runtime, CPU)")
        start = time.perf_counter()
        parity = parity_gate(adapter, tmp, n=n_parity, min_cosine=min_cosine, save_inputs=True)
        timings["parity_s"] = round(time.perf_counter() - start, 2)
        manifest = {
            "mfdeploy_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": {"id": adapter.model_id, "source": _loadable(adapter.source), "family": adapter.family.name,
                      **exported["model"]},
            # what the weights are (`serve EXPORT --variant` checks it): how they were pruned, or false (dense)
            "pruned": dict(adapter.origin) if adapter.origin else False,
            "conventions": exported["conventions"],  # the family's: text inputs and padding, scoring, loss
            "opset": exported["opset"],
            "exporter": exported["exporter"],
            "attention": exported["attention"],
            "towers": exported["towers"],
            "parity": parity,
            "files": file_records(tmp, recursive=False),
            "timings": timings,
            "versions": versions(),
        }
        write_json(tmp / EXPORT_MANIFEST, manifest)
    return manifest
