"""Export stage: ONNX towers with parity checks, 2:4 sparsity checks, TensorRT engines.

The Python API's `mfdeploy.export(...)` is `mfdeploy.api.export`, which runs the
export pipeline (`mfdeploy.pipelines.export`); this package is what it is built on.

Names are resolved on first use (PEP 562), so `import mfdeploy.exporting` loads
neither torch nor onnx nor polygraphy, and nothing here imports TensorRT at
import time: the engine module imports it inside its functions.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    # ONNX export and parity (the export pipeline, export.json included, is `mfdeploy.pipelines.export`)
    "export_towers": "onnx_export",
    "inspect_graph": "onnx_export",
    "ExportError": "onnx_export",
    "check_parity": "parity",
    "MIN_COSINE": "parity",
    # tower specs and export directories
    "TOWERS": "spec",
    "MIN_OPSET": "spec",
    "tower_specs": "spec",
    "onnx_io": "spec",
    "model_limits": "spec",
    # 2:4 sparsity of exported weights
    "check_2to4": "sparsity",
    "prunable_sparsity": "sparsity",
    # TensorRT engines
    "build_engines": "engine",
    "engine_status": "engine",
    "profile_shapes": "engine",
    "EngineError": "engine",
    "compare_with_onnxrt": "engine_check",
    "parse_sparsity_log": "trtlog",
    "capture_trt_log": "trtlog",
    "trtexec_commands": "trtexec",
    "trtexec_script": "trtexec",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])

