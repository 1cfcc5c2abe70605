"""Serve: runners (torch, ONNX Runtime CPU/CUDA/TensorRT, TensorRT engines) behind one interface, and benchmarks.

Importing this package is cheap: torch, onnxruntime, tensorrt and
matplotlib are imported only when a name that needs them is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mfdeploy.serve.base import BackendUnavailable, Runner

_LAZY = {
    "TorchRunner": "mfdeploy.serve.torch_runner",
    "OrtRunner": "mfdeploy.serve.ort_runner",
    "TrtRunner": "mfdeploy.serve.trt_runner",
    "BACKENDS": "mfdeploy.serve.registry",
    "BuildDir": "mfdeploy.serve.registry",
    "make_runner": "mfdeploy.serve.registry",
    "probe_backends": "mfdeploy.serve.registry",
    "run_bench": "mfdeploy.serve.bench",
    "parse_batch_sizes": "mfdeploy.serve.bench",
    "write_reports": "mfdeploy.serve.report",
}

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "BuildDir",
    "OrtRunner",
    "Runner",
    "TorchRunner",
    "TrtRunner",
    "make_runner",
    "parse_batch_sizes",
    "probe_backends",
    "run_bench",
    "write_reports",
]

if TYPE_CHECKING:  # pragma: no cover
    from mfdeploy.serve.bench import parse_batch_sizes, run_bench
    from mfdeploy.serve.ort_runner import OrtRunner
    from mfdeploy.serve.registry import BACKENDS, BuildDir, make_runner, probe_backends
    from mfdeploy.serve.report import write_reports
    from mfdeploy.serve.torch_runner import TorchRunner
    from mfdeploy.serve.trt_runner import TrtRunner


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
