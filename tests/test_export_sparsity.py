"""2:4 weights survive the ONNX export where TensorRT looks for them (polygraphy's sparsity check)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from helpers import sparsify_2to4

from mfdeploy.exporting import check_2to4, export_towers, prunable_sparsity


@pytest.fixture(scope="module")
def dense(tmp_path_factory, tiny_clip_dir):
    from mfdeploy.models import load

    adapter = load(tiny_clip_dir)
    out = tmp_path_factory.mktemp("dense_onnx")
    export_towers(adapter, out)
    return adapter, out


@pytest.fixture(scope="module")
def sparse24(tmp_path_factory, tiny_clip_dir):
    from mfdeploy.models import load

    adapter = load(tiny_clip_dir)
    sparsify_2to4(adapter)
    out = tmp_path_factory.mktemp("sparse24_onnx")
    export_towers(adapter, out)
    return adapter, out


def _weight_matmuls(path: Path) -> int:
    """MatMul/Gemm nodes whose second input is a (possibly transposed) initializer."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def weight(name: str) -> bool:
        node = producers.get(name)
        return name in inits or (node is not None and node.op_type == "Transpose" and node.input[0] in inits)

    return sum(1 for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and weight(n.input[1]))


@pytest.mark.parametrize("fast", [False, True], ids=["polygraphy-check", "vectorised"])
def test_2to4_model_passes_on_every_prunable_matmul(sparse24, fast):
    adapter, out = sparse24
    report = prunable_sparsity(adapter, out, fast=fast)
    assert report["unmatched"] == []  # the checker looked at every prunable layer of both towers
    assert len(report["layers"]) == len(adapter.prunable_layers()) == 24
    assert {v["tower"] for v in report["layers"].values()} == {"vision", "text"}
    assert all(v["sparse"] for v in report["layers"].values())
    assert report["all_sparse"]


@pytest.mark.parametrize("fast", [False, True], ids=["polygraphy-check", "vectorised"])
def test_dense_model_fails_the_same_check(dense, fast):
    adapter, out = dense
    report = prunable_sparsity(adapter, out, fast=fast)
    assert report["unmatched"] == [] and len(report["layers"]) == 24
    assert not any(v["sparse"] for v in report["layers"].values())
    assert not report["all_sparse"]
    for tower in ("vision", "text"):
        assert check_2to4(out / f"{tower}.onnx", fast=fast)["n_sparse"] == 0


def test_checker_sees_prunable_layers_and_projections_only(sparse24):
    _, out = sparse24
    for tower in ("vision", "text"):
        report = check_2to4(out / f"{tower}.onnx", fast=False)
        # 12 prunable linears + the final projection per tower, all MatMuls with a [K, N] weight
        assert report["n_eligible"] == _weight_matmuls(out / f"{tower}.onnx") == 13
        assert report["n_sparse"] == 12  # the projection is not pruned
        assert all(t["axis"] == 0 for t in report["tensors"].values())


def test_vectorised_check_agrees_with_polygraphy(sparse24, dense):
    for _, out in (sparse24, dense):
        for tower in ("vision", "text"):
            slow, fast = check_2to4(out / f"{tower}.onnx", fast=False), check_2to4(out / f"{tower}.onnx", fast=True)
            assert slow["tensors"] == fast["tensors"]
