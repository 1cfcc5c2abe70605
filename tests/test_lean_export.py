"""The streamed ONNX writer and the graph-only export (issue 16): the same model as onnx.save, weights
written one tensor at a time, external data aligned and relative, the modules restored afterwards."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from mfdeploy.exporting.lean import ALIGN, _matmul_linears, graph_only_export, write_model
from mfdeploy.exporting.onnx_export import example_inputs, model_sizes
from mfdeploy.exporting.spec import tower_specs


def _graph():
    """y = x @ w + b, with w and b left out (the writer attaches them)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 300])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 200])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture()
def weights():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 300, generator=g).t()  # a transposed view, as the exporter hands it over
    return {"w": w, "b": torch.randn(200, generator=g), "tiny": torch.arange(3)}


def _expected(weights):
    model = _graph()
    model.graph.initializer.extend(numpy_helper.from_array(t.contiguous().numpy(), n) for n, t in weights.items())
    return model


def test_inline_file_parses_as_the_model_onnx_save_writes(tmp_path, weights):
    assert write_model(_graph(), weights, tmp_path / "m.onnx", external=False) is None
    got = onnx.load(str(tmp_path / "m.onnx"))
    want = _expected(weights)
    assert got.graph.node == want.graph.node and got.graph.input == want.graph.input
    assert {t.name: numpy_helper.to_array(t).tolist() for t in got.graph.initializer} == \
        {t.name: numpy_helper.to_array(t).tolist() for t in want.graph.initializer}
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


def test_external_data_is_aligned_relative_and_loads(tmp_path, weights):
    import onnxruntime as ort

    data = write_model(_graph(), weights, tmp_path / "m.onnx", external=True)
    assert data == tmp_path / "m.onnx.data"
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    entries = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer}
    assert entries["tiny"] == entries["b"] == {}  # under the 1 KiB threshold: inside the graph
    assert entries["w"]["location"] == "m.onnx.data" and int(entries["w"]["offset"]) % ALIGN == 0
    assert int(entries["w"]["length"]) == 300 * 200 * 4
    x = np.random.default_rng(0).standard_normal((4, 300), dtype=np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ weights["w"].numpy() + weights["b"].numpy(), rtol=1e-5, atol=1e-4)


def test_no_data_file_when_every_tensor_is_small(tmp_path):
    assert write_model(_graph(), {"b": torch.zeros(200)}, tmp_path / "m.onnx", external=True) is None
    assert not (tmp_path / "m.onnx.data").exists()


def test_graph_only_export_names_every_weight_and_restores_the_linears(tiny_adapter):
    specs = tower_specs(model_sizes(tiny_adapter))
    example = example_inputs(tiny_adapter)
    module = tiny_adapter.vision_tower()
    before = {n: p.data_ptr() for n, p in module.named_parameters()}
    graph, tensors = graph_only_export(module, specs["vision"], example["vision"], 17)
    assert not graph.graph.initializer  # the graph alone
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("MatMul") >= 6 and "Gemm" not in ops
    linear_weights = [n for n in tensors if n.endswith(".weight_t")]
    assert linear_weights and all(tensors[n].data_ptr() == before[n[:-2]] for n in linear_weights)  # views
    assert {n: p.data_ptr() for n, p in module.named_parameters()} == before  # no weight_t left behind
    assert all(type(m).forward is m.forward.__func__ for m in module.modules() if isinstance(m, torch.nn.Linear))


def test_patch_is_undone_when_the_export_fails(tiny_adapter):
    module = tiny_adapter.text_tower()
    with pytest.raises(RuntimeError), _matmul_linears(module):
        assert any(hasattr(m, "weight_t") for m in module.modules())
        raise RuntimeError("export failed")
    assert not any(hasattr(m, "weight_t") or "forward" in vars(m) for m in module.modules())
