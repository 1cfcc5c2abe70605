"""The one parity gate every exported artifact of a pipeline goes through (onnx/, onnx_dense/, the int8 ones).

It runs the towers of a folder in ONNX Runtime against the PyTorch model
they came from (`mfdeploy.exporting.check_parity`) and, on failure, names the
folder in the one-line error, so a user knows which artifact failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfdeploy import exporting
from mfdeploy.errors import UserError
from mfdeploy.exporting.parity import MIN_COSINE


def parity_gate(adapter: Any, onnx_dir: Path, *, label: str | None = None, min_cosine: float = MIN_COSINE,
                n: int = 16, save_inputs: bool = False) -> dict[str, Any]:
    """Check `onnx_dir`'s towers against `adapter`'s PyTorch towers; returns the parity record.

    Args:
        adapter: the model the towers were made from (dense, pruned).
        onnx_dir: a folder holding both towers.
        label: what the error calls the towers (e.g. "dense towers (onnx_dense/)"); None: no prefix.
        min_cosine: smallest per-row cosine accepted for each tower.
        n: images and captions compared.
        save_inputs: also keep the real inputs beside the towers (engine checks reuse them).

    Raises:
        UserError: a tower below `min_cosine`, with `label` first.
    """
    try:
        # through the package's public name, so a test (or a user) can wrap the check in one place
        return exporting.check_parity(adapter, Path(onnx_dir), n=n, min_cosine=min_cosine, save_inputs=save_inputs)
    except UserError as e:
        if label is None:
            raise
        raise UserError(f"{label}: {e}") from None


def int8_torch_gate(adapter: Any, onnx_dir: Path) -> dict[str, Any]:
    """The gate a build's INT8 folder passes after quantizing: its ONNX Runtime towers against PyTorch at the
    INT8 bar; returns build.json's `vs_torch` entry (min cosine, max abs error, passed, per tower)."""
    from mfdeploy.quantize import MIN_COSINE as INT8_MIN_COSINE

    gate = parity_gate(adapter, onnx_dir, label=f"int8 towers ({Path(onnx_dir).name}/)", min_cosine=INT8_MIN_COSINE)
    return {t: {k: gate[t][k] for k in ("min_cosine", "max_abs_err", "passed")} for t in ("vision", "text")}
