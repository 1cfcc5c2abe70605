"""Which external data files an ONNX graph keeps its weights in: read from the graph, weights not loaded.

Every step after export that reads, copies, sizes or hashes a tower (quantize, the Triton repository) asks
here, so a `.onnx.data` file travels with its `.onnx` wherever the graph names it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from mfdeploy.errors import UserError

_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _graph_tensors(graph: Any):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any):
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def external_locations(model: Any, path: Path) -> tuple[str, ...]:
    """The files a graph's external data entries name (`location`), relative to its folder, sorted.

    Raises:
        UserError: a location that is absolute or leaves the graph's folder (Triton could not find it
            beside the copied model).
    """
    tensors = [*_graph_tensors(model.graph), *(t for f in model.functions for t in _node_tensors(f.node))]
    found = set()
    for tensor in tensors:
        if tensor.data_location != _EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        rel = PurePosixPath(location.replace("\\", "/"))
        if not location or rel.is_absolute() or ".." in rel.parts or rel.drive:
            raise UserError(f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, not a path inside "
                            "the model's folder; re-save it with `onnx.save_model(..., save_as_external_data=True, "
                            "location='NAME.data')`")
        found.add(rel.as_posix())
    return tuple(sorted(found))


def external_data_files(path: Path) -> list[Path]:
    """The external data files of the ONNX file `path`, as paths beside it (none: every weight is inside it).

    Raises:
        UserError: a location outside the graph's folder (see `external_locations`).
    """
    import onnx

    path = Path(path)
    return [path.parent / rel for rel in external_locations(onnx.load(str(path), load_external_data=False), path)]


def model_bytes(path: Path) -> int:
    """Bytes of an ONNX model: the file and its external data files."""
    return Path(path).stat().st_size + sum(f.stat().st_size for f in external_data_files(path))


__all__ = ["external_data_files", "external_locations", "model_bytes"]
