"""Faults a new user hit (a ninth round, b): the artifacts read by other tools and from other folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_cli


def test_an_export_of_a_relative_checkpoint_path_is_served_from_any_folder(tiny_clip_dir, tmp_path, monkeypatch):
    """`mfdeploy export b1/pruned --out ex1` recorded `"source": "b1/pruned"`; `mfdeploy serve /abs/ex1` run from
    another folder then said the model "is not in the Hugging Face cache here: download it with huggingface-cli
    download b1/pruned"."""
    from mfdeploy.server.source import _checkpoint

    work = tmp_path / "work"
    shutil.copytree(tiny_clip_dir, work / "ckpt" / "pruned")
    monkeypatch.chdir(work)
    assert run_cli(["export", "ckpt/pruned", "--out", "ex"]) == 0
    source = json.loads((work / "ex" / "export.json").read_text())["model"]["source"]
    assert source == str((work / "ckpt" / "pruned").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Path(_checkpoint(source, work / "ex")) == (work / "ckpt" / "pruned").resolve()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_clip_dir) -> Path:
    out = tmp_path_factory.mktemp("r9b_export") / "onnx"
    assert run_cli(["export", str(tiny_clip_dir), "--out", str(out), "--external-data"]) == 0
    return out


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_a_quantized_exports_manifest_describes_the_quantized_graphs(tiny_export, tmp_path, target):
    """`mfdeploy quantize EXPORT --out DIR` copied the fp32 export's `export.json` into DIR: its `opset` (17) and
    each tower's `graph` (nodes, ops: no QuantizeLinear) described the fp32 files, not DIR's QDQ graphs (opset 19
    from ModelOpt); `external_data`/`data_file` named a `vision.onnx.data` that ModelOpt's single file does not
    have."""
    import onnx

    if target == "trt":
        pytest.importorskip("modelopt.onnx.quantization")
    out = tmp_path / "q"
    scheme = ["--scheme", "static"] if target == "ort" else []
    assert run_cli(["quantize", str(tiny_export), "--out", str(out), "--target", target, *scheme,
                    "--calib", "shapes", "--calib-samples", "8"]) == 0
    record = json.loads((out / "export.json").read_text())
    opsets = []
    for tower in ("vision", "text"):
        model = onnx.load(str(out / f"{tower}.onnx"), load_external_data=False)
        graph = record["towers"][tower]["graph"]
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert graph["nodes"] == len(model.graph.node) and graph["opset"] == opset, (tower, graph["nodes"])
        assert graph["ops"].get("QuantizeLinear", 0) > 0 and graph["ops"].get("DequantizeLinear", 0) > 0
        data = [e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                for e in t.external_data if e.key == "location"]
        data_file = record["towers"][tower]["data_file"]
        assert record["towers"][tower]["external_data"] == bool(data) and (data_file is None) == (not data)
        assert data_file is None or (out / data_file).is_file()
        opsets.append(opset)
    assert record["opset"] == max(opsets)
