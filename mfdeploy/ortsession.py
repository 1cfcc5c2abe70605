"""One ONNX Runtime session setup, shared by the runners, the export parity check and the quantize gate.

It sits at level 0 (beside `platform`) because both the exporter and the
runtime build sessions and must not import each other; it imports nothing of
mfdeploy but the platform probe, and onnxruntime only when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfdeploy.platform import ORT_PROVIDERS, physical_cores


def ort_session(path: str | Path | bytes, providers: list[Any] | None = None, *, threads: int | None = None,
                spin: bool = False, optimize: bool = True) -> Any:
    """An `onnxruntime.InferenceSession` over a model file (or serialized bytes).

    Args:
        path: the ONNX file (its external data beside it), or the model's bytes.
        providers: ONNX Runtime providers with their options (default: the CPU provider only).
        threads: intra-op threads (default: the physical cores); one inter-op thread, sequential.
        spin: let idle intra-op threads busy-wait. Off by default: one-off checks and sessions that
            take turns must not starve everything else on a shared machine.
        optimize: all graph optimisations (False: ONNX Runtime's basic level, the model as written).

    Raises:
        Whatever onnxruntime raises for a model it cannot load (callers turn it into their one line).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise, fallbacks checked
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=opts, providers=providers or [ORT_PROVIDERS["cpu"]])
