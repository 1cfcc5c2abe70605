"""The runners `mfdeploy eval` builds beyond fp32 PyTorch: ONNX Runtime and OpenVINO over the ONNX towers, and
PyTorch in bf16, each one below fp32 gated against the model's fp32 towers before it is evaluated.

The gate compares with the loaded model itself in fp32 (PyTorch), on the
parity inputs kept beside the ONNX towers, or on held-out shapes scenes
through the model's own preprocessing when there are none
(`mfdeploy.runtime.gate`). A tower under it is refused in one line with its
cosine: the accuracy of a precision that does not match is never reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfdeploy.errors import UserError
from mfdeploy.runtime.base import BackendUnavailable, Runner

OPENVINO = ("openvino", "openvino-int8")


def check_options(backend: str, precision: str | None, dtype: str | None, cuda: bool = False) -> None:
    """Refuse, before anything loads, a bad `--precision`/`--dtype` or one the backend does not take.

    Raises:
        UserError: in one line; OpenVINO not installed (naming the extra that installs it).
    """
    from mfdeploy.runtime.openvino_runner import check_precision, require_openvino

    if precision is not None:
        check_precision(precision)
        if backend not in OPENVINO:
            raise UserError(f"--precision {precision}: applies to --backend {' or '.join(OPENVINO)}, not {backend}")
    if dtype is not None:
        from mfdeploy.runtime.torch_runner import check_dtype

        check_dtype(dtype, cuda)  # `cuda`: the towers run on a CUDA device, where float16 runs too
        if backend != "torch":
            raise UserError(f"--dtype {dtype}: applies to --backend torch, not {backend}")
    if backend in OPENVINO:
        try:
            require_openvino()
        except BackendUnavailable as e:
            raise UserError(f"--backend {backend}: {e}") from None


def _gated(runner: Runner, adapter: Any, parity_dir: Path | None, backend: str, fix: str) -> Runner:
    from mfdeploy.runtime.gate import gate_runner
    from mfdeploy.runtime.registry import TOWERS
    from mfdeploy.runtime.torch_runner import TorchRunner

    try:
        return gate_runner(runner, TorchRunner(adapter, dtype="float32"), parity_dir, lambda: adapter,
                           "int8" if backend.endswith("int8") else "fp", TOWERS,
                           label=f"--backend {backend} in {runner.precision}", fix=fix)
    except BackendUnavailable as e:
        raise UserError(str(e)) from None


def torch_runner(adapter: Any, dtype: str | None, parity_dir: Path | None) -> Runner:
    """PyTorch on the model's device, in `dtype` (None: float32 on the CPU, as loaded on a GPU); below fp32, gated
    first."""
    from mfdeploy.runtime.torch_runner import TorchRunner

    runner = TorchRunner(adapter, dtype=dtype)
    if dtype is None or runner.precision == "f32":
        return runner
    return _gated(runner, adapter, parity_dir, "torch", "evaluate with --dtype float32")


def onnx_runner(backend: str, onnx_dir: Path, adapter: Any, precision: str | None, parity_dir: Path | None) -> Runner:
    """ONNX Runtime (onnx, onnx-int8) or OpenVINO (openvino, openvino-int8) on the CPU over `onnx_dir`.

    Raises:
        UserError: the runtime cannot run here, or OpenVINO's towers fall under the gate.
    """
    try:
        if backend in OPENVINO:
            from mfdeploy.runtime.openvino_runner import OpenVinoRunner

            runner: Runner = OpenVinoRunner(onnx_dir, precision=precision or "auto")
        else:
            from mfdeploy.runtime.ort_runner import OrtRunner

            ort = OrtRunner(onnx_dir, provider="cpu")
            if not backend.endswith("int8"):  # onnx-int8 runs quantized towers, which OrtRunner labels from their
                ort.precision = "f32"  # quantize.json (int8+f32; TensorRT's fp8 QDQ towers: f32 on the CPU)
            return ort
    except (BackendUnavailable, ImportError) as e:
        raise UserError(f"--backend {backend}: {e}") from None
    fix = "evaluate with --precision f32" if runner.precision != "f32" else "evaluate with --backend onnx"
    return _gated(runner, adapter, parity_dir, backend, fix)


def precision_record(runner: Runner) -> dict[str, Any]:
    """What the result says of the precision: what each tower ran in, and the gate it passed (if gated)."""
    from mfdeploy.runtime.registry import TOWERS

    record: dict[str, Any] = {"precision": {t: runner.tower_precision(t) for t in TOWERS}}
    if getattr(runner, "gate", None):
        record["gate"] = runner.gate  # type: ignore[attr-defined]
    return record


__all__ = ["OPENVINO", "check_options", "onnx_runner", "precision_record", "torch_runner"]
