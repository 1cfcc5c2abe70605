"""Runtime: runners (torch, ONNX Runtime CPU/CUDA/TensorRT, TensorRT engines, OpenVINO) behind one interface, over the
artifacts a build wrote. It reads artifacts only: it never imports the exporter.

Importing this package is cheap: torch, onnxruntime, tensorrt, openvino and
matplotlib are imported only when a name that needs them is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mfdeploy.runtime.base import BackendUnavailable, Runner

_LAZY = {
    "TorchRunner": "mfdeploy.runtime.torch_runner",
    "OrtRunner": "mfdeploy.runtime.ort_runner",
    "TrtRunner": "mfdeploy.runtime.trt_runner",
    "OpenVinoRunner": "mfdeploy.runtime.openvino_runner",
    "GateRefused": "mfdeploy.runtime.gate",
    "BACKENDS": "mfdeploy.runtime.registry",
    "TOWERS": "mfdeploy.runtime.registry",
    "BuildDir": "mfdeploy.runtime.build_dir",
    "check_backends": "mfdeploy.runtime.registry",
    "make_runner": "mfdeploy.runtime.registry",
    "probe_backends": "mfdeploy.runtime.registry",
}

__all__ = [
    "BACKENDS",
    "TOWERS",
    "BackendUnavailable",
    "BuildDir",
    "GateRefused",
    "OpenVinoRunner",
    "OrtRunner",
    "Runner",
    "TorchRunner",
    "TrtRunner",
    "check_backends",
    "make_runner",
    "probe_backends",
]

if TYPE_CHECKING:  # pragma: no cover
    from mfdeploy.runtime.build_dir import BuildDir
    from mfdeploy.runtime.gate import GateRefused
    from mfdeploy.runtime.openvino_runner import OpenVinoRunner
    from mfdeploy.runtime.ort_runner import OrtRunner
    from mfdeploy.runtime.registry import BACKENDS, TOWERS, check_backends, make_runner, probe_backends
    from mfdeploy.runtime.torch_runner import TorchRunner
    from mfdeploy.runtime.trt_runner import TrtRunner


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
