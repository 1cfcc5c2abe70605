"""OpenVINO runner: the CPU plugin over the same `vision.onnx`/`text.onnx` ONNX Runtime reads.

OpenVINO reads the ONNX files directly (no conversion step, no new
artifact) and, unlike ONNX Runtime on x86, runs their float parts in BF16
on CPUs that have BF16 instructions (AVX-512 BF16, AMX). Its precision is
a choice (`--precision`), read back from the compiled model afterwards:
what a bench row or a server reports is what ran, not what was asked.

An INT8 graph runs in INT8 on OpenVINO when it is a static QDQ graph (`mfdeploy
quantize --scheme static`, the vision tower's default): OpenVINO folds the
calibrated Quantize/Dequantize pairs into integer kernels. A dynamic one
(`MatMulInteger` fed by `DynamicQuantizeLinear`, the text tower's default for
ONNX Runtime) has no calibrated ranges; OpenVINO runs it in float, slower
than the fp32 graph in bf16. The runner says so in a warning naming the fix.
Measured on ViT-B/32's text tower (2 threads, batch 1 and 8,
`benchmarks/bf16_cpu.py`): OpenVINO 8.3 and 21.9 ms on the static graph,
ONNX Runtime 9.0 and 36.7 ms on the dynamic one; OpenVINO took 18.4 and 78.6
ms on the dynamic one in the script's earlier run. A trial rewrite of the
dynamic matmuls into OpenVINO's int8-weight form (its own dynamic activation
quantization) ran slower than the bf16 graph at batch 1, so the runner does
not do it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy import platform
from mfdeploy.artifacts.layout import ONNX_FILES, TOWER_NAMES
from mfdeploy.errors import UserError, first_line
from mfdeploy.runtime.base import BackendUnavailable, GraphRunner, graph_feed
from mfdeploy.runtime.build_dir import missing_tower

log = logging.getLogger(__name__)

EXTRA = "pip install 'mfdeploy[openvino]'"
PRECISIONS = ("auto", "f32", "bf16", "f16")
# --precision -> the CPU capability (`OPTIMIZATION_CAPABILITIES`) that runs it natively
_NEEDS = {"bf16": "BF16", "f16": "FP16"}
# OpenVINO's names of element types -> ours (an integer layer of an INT8 graph: "int8", whatever its signedness)
_TYPES = {"f32": "f32", "bf16": "bf16", "f16": "f16", "u8": "int8", "i8": "int8"}
# the layers that hold the arithmetic (matmuls, the patch convolution): their execution precision is reported
_COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution")
# ONNX ops of a dynamic INT8 graph (ONNX Runtime's dynamic quantization): OpenVINO runs them in float
_DYNAMIC_INT8_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"})


def require_openvino() -> Any:
    """The `openvino` module.

    Raises:
        BackendUnavailable: it is not installed; the message names the extra that installs it.
    """
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"OpenVINO is not installed: {EXTRA}") from None
    return openvino


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`, before anything is loaded.

    Raises:
        UserError: another value, in one line listing the choices.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    return precision


def cpu_capabilities(core: Any = None) -> list[str]:
    """What OpenVINO's CPU plugin says this CPU runs natively, e.g. `['BF16', 'FP32', 'INT8', ...]`."""
    core = core or require_openvino().Core()
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def resolve_precision(precision: str, capabilities: Sequence[str]) -> tuple[str, str]:
    """The inference precision to compile with, and why.

    `auto` is what the CPU does natively: BF16 where it has BF16 instructions,
    else FP16 where it has native FP16 (Arm), else f32.

    Raises:
        UserError: an unknown precision.
        BackendUnavailable: `bf16` or `f16` on a CPU without them (OpenVINO would quietly run something else).
    """
    check_precision(precision)
    caps = ", ".join(capabilities)
    if precision == "auto":
        chosen = next((p for p in ("bf16", "f16") if _NEEDS[p] in capabilities), "f32")
        return chosen, f"auto: {chosen}, native on this CPU (OpenVINO CPU capabilities: {caps})"
    if precision in _NEEDS and _NEEDS[precision] not in capabilities:
        native = [p for p in ("bf16", "f16") if _NEEDS[p] in capabilities]
        raise BackendUnavailable(f"--precision {precision}: this CPU has no native {_NEEDS[precision]} (OpenVINO "
                                 f"CPU capabilities: {caps}); use --precision {', '.join(['auto', *native])} or f32")
    return precision, f"{precision}, as asked (OpenVINO CPU capabilities: {caps})"


class OpenVinoRunner(GraphRunner):
    """OpenVINO's CPU plugin over an export directory holding `vision.onnx` and `text.onnx`.

    Each tower is compiled once, with dynamic batch and text length, for latency (one stream using
    every thread, as ONNX Runtime's sequential session does), and keeps one infer request.
    """

    name = "openvino"

    def __init__(self, onnx_dir: str | Path, precision: str = "auto", threads: int | None = None,
                 towers: Sequence[str] = TOWER_NAMES):
        """Compile one model per tower.

        Args:
            onnx_dir: directory with `vision.onnx` and/or `text.onnx` (`onnx/`, `onnx_dense/`, `onnx_int8/`).
            precision: auto | f32 | bf16 | f16: OpenVINO's inference precision of the float layers.
            threads: inference threads (default: the physical cores).
            towers: which towers to load.

        Raises:
            BackendUnavailable: OpenVINO is not installed, the precision is not native here, or OpenVINO
                compiled another precision than asked.
            UserError: an unknown precision, a model file missing or unreadable.
        """
        check_precision(precision)
        ov = require_openvino()
        core = ov.Core()
        self.threads = threads or platform.physical_cores()
        self.capabilities = cpu_capabilities(core)
        self.precision, self.precision_note = resolve_precision(precision, self.capabilities)
        self.onnx_dir = Path(onnx_dir)
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": self.threads}
        self.compiled: dict[str, Any] = {}
        self.requests: dict[str, Any] = {}
        self.execution: dict[str, dict[str, int]] = {}  # tower -> {precision: compute layers run in it}
        for tower in towers:
            path = self.onnx_dir / ONNX_FILES[tower]
            if not path.is_file():
                raise missing_tower(path)
            try:
                model = core.read_model(str(path))
                compiled = core.compile_model(model, "CPU", config)
            except RuntimeError as e:  # OpenVINO raises RuntimeError with a multi-line trace of its sources
                raise UserError(f"{path}: OpenVINO cannot load it ({first_line(e)})") from None
            got = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
            if got != self.precision:
                raise BackendUnavailable(f"OpenVINO compiled {path.name} in {got}, not the {self.precision} asked "
                                         f"for (OpenVINO CPU capabilities: {', '.join(self.capabilities)})")
            self.compiled[tower] = compiled
            self.requests[tower] = compiled.create_infer_request()
            self.execution[tower] = execution_precisions(compiled)
            # the ONNX file is parsed again only for an INT8 graph that did not run in INT8: not for float ones
            if "int8" not in self.execution[tower] and _int8_constants(model) and dynamic_int8(path):
                log.warning("%s: a dynamic INT8 graph (MatMulInteger), which OpenVINO runs in float (%s), slower "
                            "than the fp32 graph; for INT8 on OpenVINO, quantize it statically: mfdeploy quantize "
                            "BUILD --in-place --scheme static (new builds: mfdeploy build --int8 --int8-scheme static)",
                            path, self.tower_precision(tower))

    def tower_precision(self, tower: str) -> str:
        """What the tower's compute layers ran in, most used first, e.g. "bf16", "int8+bf16" (an INT8 graph)."""
        counts = self.execution.get(tower)
        return "+".join(p for p, _ in Counter(counts).most_common()) if counts else self.precision

    def _run(self, tower: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
        request = self.requests.get(tower)
        if request is None:
            raise RuntimeError(f"{self.name}: the {tower} tower was not loaded")
        feed = graph_feed(tower, arrays, [(port.any_name, port.get_element_type().to_dtype())
                                          for port in self.compiled[tower].inputs])
        request.infer(feed, share_inputs=True)
        # the output tensor is the request's own memory, overwritten by the next call: copy it out
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def close(self) -> None:
        self.requests.clear()
        self.compiled.clear()


def _type_name(element_type: Any) -> str:
    """`<Type: 'bfloat16'>` -> "bf16"."""
    name = element_type.get_type_name() if hasattr(element_type, "get_type_name") else str(element_type)
    return _TYPES.get(name, name)


def _int8_constants(model: Any) -> bool:
    """Whether an OpenVINO model (as read, before compiling) holds 8-bit integer constants: quantized weights."""
    return any(op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8")
               for op in model.get_ops())


def dynamic_int8(path: Path) -> bool:
    """Whether the ONNX file at `path` is a dynamic INT8 graph (module doc); parses the whole file (weights
    embedded in it included, not external ones)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in _DYNAMIC_INT8_OPS for node in graph.node)


def execution_precisions(compiled: Any) -> dict[str, int]:
    """How many compute layers (matmuls, convolutions) of a compiled model run in each precision.

    Read from the runtime graph OpenVINO executes (`runtimePrecision` of each layer), so an INT8 graph
    shows its integer layers, and float layers OpenVINO kept in f32 show as such.
    """
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in _COMPUTE_LAYERS and "runtimePrecision" in info:
            counts[_TYPES.get(info["runtimePrecision"].astype(str), info["runtimePrecision"].astype(str))] += 1
    return dict(counts)


__all__ = ["EXTRA", "PRECISIONS", "OpenVinoRunner", "check_precision", "cpu_capabilities", "dynamic_int8",
           "require_openvino", "resolve_precision"]
