"""A Triton model configuration read off an ONNX graph: tensor names, Triton data types and dims, the external
data files the graph references, and the `config.pbtxt` text.

Nothing is assumed from the tower specs: names, types and shapes are those of the graph a model was made
from, so a config always describes the file it sits beside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import TRITON_MODEL_FILES
from mfdeploy.errors import UserError
from mfdeploy.exporting.external import external_locations

# ONNX TensorProto element type -> Triton model config DataType (model_config.proto)
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
PLATFORMS = {"onnx": "onnxruntime_onnx", "plan": "tensorrt_plan", "openvino": "openvino"}
# formats served by a backend named in the config (`backend:`), not a platform: Triton's OpenVINO backend reads
# the ONNX file named by `default_model_filename`, on the CPU only; one stream, for latency (its README's
# latency mode), as `mfdeploy serve --backend openvino` runs it
BACKEND_FORMATS: dict[str, dict[str, Any]] = {"openvino": {"default_model_filename": TRITON_MODEL_FILES["openvino"],
                                "parameters": {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}}}
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class Tensor:
    """One input or output as the model config states it."""

    name: str
    data_type: str  # TYPE_FP32, TYPE_INT64, ...
    dims: tuple[int, ...]  # without the batch axis; -1: dynamic (e.g. the text length)
    shape: tuple[str | int, ...]  # the graph's full shape: axis names (dynamic) and sizes

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": self.data_type, "dims": list(self.dims), "onnx_shape": list(self.shape)}


@dataclass(frozen=True)
class GraphIO:
    """What a config needs from one ONNX file."""

    path: Path
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    external: tuple[str, ...] = ()  # external data files, relative to the graph's folder (POSIX)


def read_graph(path: Path) -> GraphIO:
    """Read a graph's inputs, outputs, metadata and external data locations (no weights loaded).

    Raises:
        UserError: unreadable file, a tensor type Triton has no name for, a tensor without a dynamic
            first (batch) axis, or an external data location outside the graph's folder.
    """
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    weights = {t.name for t in model.graph.initializer}  # old exporters list initializers as inputs too
    inputs = tuple(_tensor(path, "input", v) for v in model.graph.input if v.name not in weights)
    outputs = tuple(_tensor(path, "output", v) for v in model.graph.output)
    meta = {p.key: p.value for p in model.metadata_props}
    return GraphIO(path, inputs, outputs, meta, external_locations(model, path))


def _tensor(path: Path, what: str, value: Any) -> Tensor:
    tt = value.type.tensor_type
    if tt.elem_type not in TRITON_TYPES:
        raise UserError(f"{path}: {what} {value.name!r} has ONNX element type {tt.elem_type}, which a Triton "
                        "model config cannot state")
    shape = tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim)
    if not shape or isinstance(shape[0], int):
        first = shape[0] if shape else "none (a scalar)"
        raise UserError(f"{path}: {what} {value.name!r} has a fixed first axis ({first}); Triton's dynamic "
                        "batching needs a dynamic batch axis (export the towers with `mfdeploy export`)")
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape[1:])
    return Tensor(value.name, TRITON_TYPES[tt.elem_type], dims, shape)


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor_block(tensors: tuple[Tensor, ...]) -> list[str]:
    lines = []
    for i, t in enumerate(tensors):
        lines += ["  {", f"    name: {_quote(t.name)}", f"    data_type: {t.data_type}",
                  f"    dims: [ {', '.join(str(d) for d in t.dims)} ]", "  }" + ("," if i < len(tensors) - 1 else "")]
    return lines


def render_config(name: str, fmt: str, io: GraphIO, max_batch: int, kind: str, max_queue_delay_us: int) -> str:
    """The `config.pbtxt` text (protobuf text format of Triton's ModelConfig).

    Args:
        name: the model's name (its folder in the repository).
        fmt: "onnx", "plan" or "openvino" (platform onnxruntime_onnx, tensorrt_plan; backend openvino).
        io: the graph the model's inputs and outputs are read from.
        max_batch: Triton's `max_batch_size`; the batch axis is left out of every `dims`.
        kind: "cpu" or "gpu" (the instance group's kind).
        max_queue_delay_us: how long the dynamic batcher waits to fill a batch.
    """
    backend = BACKEND_FORMATS.get(fmt)
    runs = ([f"backend: {_quote(PLATFORMS[fmt])}",
             f"default_model_filename: {_quote(backend['default_model_filename'])}"]
            if backend else [f"platform: {_quote(PLATFORMS[fmt])}"])
    lines = [f"name: {_quote(name)}", *runs, f"max_batch_size: {max_batch}",
             "input [", *_tensor_block(io.inputs), "]", "output [", *_tensor_block(io.outputs), "]",
             "dynamic_batching {", f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}",
             "instance_group [", "  {", "    count: 1", f"    kind: {KINDS[kind]}", "  }", "]"]
    for key, value in (backend or {}).get("parameters", {}).items():
        lines += ["parameters {", f"  key: {_quote(key)}", f"  value: {{ string_value: {_quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"
