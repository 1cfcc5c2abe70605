"""Export a tower without copying its weights: the graph alone, then the tensors streamed into the file.

torch's TorchScript exporter writes the graph without weights
(`export_params=False`, `graph_only_export`); `write_model` attaches the
module's own tensors while writing the file, one at a time, so no second
copy of a tower's weights exists in memory at any point (torch's own file
export, loaded back and optimised, held them several times over: folded
transposes, the serialised message, the bytes handed back to Python, the
loaded and optimised copies):

- external data (`save_as_external_data`): every tensor of at least
  `size_threshold` bytes is appended to `<model>.onnx.data` (offsets aligned
  to 4 KiB so runtimes can map it), the graph records location, offset and
  length, relative to the model's folder;
- inline: the graph is written first, then each tensor as its own
  length-delimited `graph { initializer { ... } }` field. Protocol buffers
  merge repeated occurrences of a message field, so every reader (onnx,
  ONNX Runtime, TensorRT's parser) sees one graph holding every initializer;
  `onnx.load` of the file equals the model `onnx.save_model` would write.
"""

from __future__ import annotations

import contextlib
import io
import types
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from mfdeploy.exporting.spec import dynamic_axes

ALIGN = 4096
_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_prefix(field: int, length: int) -> bytes:
    return _varint((field << 3) | 2) + _varint(length)


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous little-endian numpy view (a copy only where the tensor is not contiguous)."""
    arr = tensor.detach().cpu().contiguous().numpy()
    return arr if arr.dtype.byteorder != ">" else arr.astype(arr.dtype.newbyteorder("<"))


def tensor_header(name: str, arr: np.ndarray) -> Any:
    """A TensorProto with name, dims and data type, and no data yet."""
    from onnx import TensorProto, helper

    proto = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype))
    proto.dims.extend(arr.shape)
    return proto


def write_model(model: Any, tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], path: Path,
                external: bool, size_threshold: int = 1024) -> Path | None:
    """Write `model` (a ModelProto without these initializers) to `path` with `tensors` as its initializers.

    Args:
        model: the graph; it must not already hold initializers of these names (it is not modified).
        tensors: name -> tensor, written in this order.
        path: the `.onnx` file to write (its parent must exist).
        external: keep tensors of `size_threshold` bytes or more in `<path>.data`.
        size_threshold: smaller tensors stay inside the graph.

    Returns:
        The external data file, or None when every weight is inside the graph.
    """
    from onnx import TensorProto

    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    for stale in (path, data_path):
        stale.unlink(missing_ok=True)
    if not external:
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
            for name, tensor in items:
                arr = as_numpy(tensor)
                proto = tensor_header(name, arr)
                proto.raw_data = arr.tobytes()  # one tensor's bytes at a time
                body = proto.SerializeToString()
                inner = _len_prefix(_INITIALIZER_FIELD, len(body))
                f.write(_len_prefix(_GRAPH_FIELD, len(inner) + len(body)))
                f.write(inner)
                f.write(body)
        return None
    graph_model = type(model)()
    graph_model.CopyFrom(model)
    wrote_data = False
    with open(data_path, "wb") as data:
        for name, tensor in items:
            arr = as_numpy(tensor)
            proto = tensor_header(name, arr)
            if arr.nbytes < size_threshold:
                proto.raw_data = arr.tobytes()
            else:
                offset = data.tell()
                if offset % ALIGN:
                    data.write(b"\0" * (ALIGN - offset % ALIGN))
                    offset = data.tell()
                data.write(arr.reshape(-1).view(np.uint8).data)  # the array's own bytes, no copy
                proto.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data_path.name), ("offset", str(offset)),
                                   ("length", str(arr.nbytes))):
                    entry = proto.external_data.add()
                    entry.key, entry.value = key, value
                wrote_data = True
            graph_model.graph.initializer.append(proto)
    if not wrote_data:
        data_path.unlink()
    path.write_bytes(graph_model.SerializeToString())
    return data_path if wrote_data else None


def _matmul_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    y = torch.matmul(x, cast(torch.Tensor, self.weight_t))  # registered by `_matmul_linears`
    return y if self.bias is None else y + self.bias


@contextlib.contextmanager
def _matmul_linears(module: nn.Module):
    """Every `nn.Linear` computes `x @ weight_t + bias`, `weight_t` a transposed view of its weight (no copy).

    `F.linear` traces to `MatMul(x, Transpose(W))`, and constant folding then
    materialises every `W^T` as a new tensor that only torch's exporter holds.
    With the view as a parameter of its own the graph names it and no
    folding happens. The modules are restored on exit.
    """
    patched: list[nn.Linear] = []
    try:
        for m in module.modules():
            if type(m) is nn.Linear:  # exact type: subclasses keep their own forward
                patched.append(m)
                m.register_parameter("weight_t", nn.Parameter(m.weight.detach().t(), requires_grad=False))
                vars(m)["forward"] = types.MethodType(_matmul_forward, m)  # the instance's own, popped below
        yield
    finally:
        for m in patched:
            vars(m).pop("forward", None)
            m._parameters.pop("weight_t", None)


def graph_only_export(module: nn.Module, spec: dict[str, Any], example: dict[str, torch.Tensor],
                       opset: int) -> tuple[Any, dict[str, torch.Tensor]] | None:
    """The tower's graph without weights, and the tensors its weight inputs name (None: a weight it cannot name).

    Weights are graph inputs named after the module's parameters and buffers
    (`vision_model.encoder.layers.0.mlp.fc1.weight_t`). A weight torch folded
    into a new tensor has no such name; then the caller exports the classic way.
    """
    import onnx

    args = tuple(example[name] for name in spec["inputs"])
    buf = io.BytesIO()
    with _matmul_linears(module), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: parity proves the graph general
        named = {**dict(module.named_buffers()), **dict(module.named_parameters())}
        # the TorchScript exporter (dynamo=False) writes to a file object too, which torch's annotation omits
        torch.onnx.export(module, args, buf,  # type: ignore[arg-type]
                          dynamo=False, export_params=False, dynamic_axes=dynamic_axes(spec),
                          do_constant_folding=True, input_names=list(spec["inputs"]),
                          output_names=list(spec["outputs"]), opset_version=opset)
    graph = onnx.load_from_string(buf.getvalue())
    weights = [i.name for i in graph.graph.input if i.name not in spec["inputs"]]
    if any(name not in named for name in weights):
        return None
    return graph, {name: named[name] for name in weights}


__all__ = ["graph_only_export", "write_model"]
