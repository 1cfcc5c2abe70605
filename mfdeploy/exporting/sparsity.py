"""Does an ONNX graph hold 2:4 sparse weights? Polygraphy's checker, mapped back to prunable layers.

Polygraphy's `SparsityPruner` walks every MatMul/Gemm/Conv, follows a weight
back through Transpose/Cast/Q/DQ to its initializer and notes the axis that
TensorRT reduces over (K: axis 0 of a MatMul's `[K, N]` weight, axis 1 of a
Gemm weight with transB). Its `check()` then tests each group of 4 along that
axis for two zeros. That per-group check is a Python loop (minutes on a
ViT-B); for large models the same test runs vectorised on polygraphy's own
list of candidates, and the tests hold the two to the same answer.
"""

from __future__ import annotations

import hashlib
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

FAST_ABOVE = 4_000_000  # eligible weight elements above which the vectorised check is used


@contextmanager
def _quiet():
    from polygraphy.logger import G_LOGGER

    # The checker warns once per dense tensor and per activation it cannot trace back, and numpy
    # warns about its float32 "infinity" sentinel (sys.float_info.max): noise here.
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _load(onnx_path: str | Path):
    import onnx

    return onnx.load(str(onnx_path))  # weights included (external data too): the check reads them


def _is_2to4(arr: np.ndarray, axis: int) -> bool:
    k = np.moveaxis(arr, axis, 0)  # [K, ...]
    groups = k.reshape(k.shape[0] // 4, 4, -1)  # [K/4, 4, rest]
    return bool(((groups == 0).sum(axis=1) >= 2).all())


def check_2to4(onnx_path: Path | Any, fast: bool | None = None) -> dict[str, Any]:
    """Check every weight TensorRT could run sparse for the 2:4 pattern along its reduction axis.

    Args:
        onnx_path: an ONNX file, or an already loaded `onnx.ModelProto` (with its weights).
        fast: use the vectorised check on polygraphy's candidate list instead of
            `SparsityPruner.check()`; None picks it for large models only.

    Returns:
        `{"tensors": {initializer: {"axis", "shape", "sparse"}}, "n_eligible", "n_sparse", "checker"}`.
        Eligible means polygraphy would check it (float, reduction axis a multiple of 4).
    """
    from onnx import numpy_helper
    from polygraphy.tools.sparse import SparsityPruner

    model = _load(onnx_path) if isinstance(onnx_path, (str, Path)) else onnx_path
    inits = {t.name: t for t in model.graph.initializer}
    with _quiet():
        if fast is None:
            probe = SparsityPruner(model)
            infos = probe._walk_nodes()  # polygraphy's own graph walk and eligibility rules
            fast = sum(int(np.prod(inits[i.name].dims)) for i in infos) > FAST_ABOVE
        pruner = SparsityPruner(model)
        if fast:
            eligible = {i.name: i.axis for i in pruner._walk_nodes()}
            sparse = {name for name, axis in eligible.items() if _is_2to4(numpy_helper.to_array(inits[name]), axis)}
        else:
            pruner.check()
            # prune_infos holds every candidate; check() only tested the eligible ones (same rules as _walk_nodes).
            eligible = {name: info.axis for name, info in pruner.prune_infos.items()
                        if inits[name].data_type in (1, 10, 16) and inits[name].dims[info.axis] % 4 == 0}
            sparse = set(pruner.sparse_tensors)
    tensors = {name: {"axis": axis, "shape": list(inits[name].dims), "sparse": name in sparse}
               for name, axis in eligible.items()}
    return {"checker": "polygraphy-vectorised" if fast else "polygraphy", "n_eligible": len(tensors),
            "n_sparse": sum(t["sparse"] for t in tensors.values()), "tensors": tensors}


def _key(arr_kn: np.ndarray) -> tuple[tuple[int, ...], str]:
    a = np.ascontiguousarray(arr_kn, dtype=np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


def prunable_sparsity(adapter, onnx_dir: Path, fast: bool | None = None) -> dict[str, Any]:
    """Map each prunable layer of `adapter` to its ONNX initializer and report whether it is 2:4.

    Initializers are matched by value, not by name (exporters rename and
    transpose them): a torch Linear weight `[out, in]` equals the checked
    tensor moved to `[K, N]` = `[in, out]`. A prunable layer with no match was
    never looked at by the checker, which the caller should treat as a failure.

    Returns:
        `{"layers": {name: {"tower", "initializer", "sparse"}}, "unmatched": [names], "all_sparse": bool}`.
    """
    from onnx import numpy_helper

    from mfdeploy.exporting.spec import TOWERS

    by_key: dict[tuple, list[str]] = {}
    modality: dict[str, str] = {}
    for name, layer in adapter.prunable_layers().items():
        w = layer.module.weight.detach().float().cpu().numpy()  # [out, in]
        by_key.setdefault(_key(w.T), []).append(name)
        modality[name] = layer.modality
    layers: dict[str, dict[str, Any]] = {}
    for tower, spec in TOWERS.items():
        model = _load(Path(onnx_dir) / spec["file"])
        report = check_2to4(model, fast=fast)
        inits = {t.name: t for t in model.graph.initializer}
        for init_name, info in report["tensors"].items():
            arr = np.moveaxis(numpy_helper.to_array(inits[init_name]), info["axis"], 0)
            if arr.ndim != 2:
                continue  # conv kernels: not prunable linears
            for name in by_key.get(_key(arr), []):
                if modality[name] == tower:
                    layers[name] = {"tower": tower, "initializer": init_name, "sparse": info["sparse"]}
    unmatched = [n for n in modality if n not in layers]
    return {"layers": layers, "unmatched": unmatched,
            "all_sparse": not unmatched and all(v["sparse"] for v in layers.values())}
