"""Faults a new user hit (a ninth round, b): the artifacts read by other tools and from other folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import export_with_cli
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
    return export_with_cli(tmp_path_factory, tiny_clip_dir, "r9b_export")


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_a_quantized_exports_manifest_describes_the_quantized_graphs(tiny_export, tmp_path, target):
    """`mfdeploy quantize EXPORT --out DIR` copied the fp32 export's `export.json` into DIR: its `opset` (17) and
    each tower's `graph` (nodes, ops: no QuantizeLinear) described the fp32 files, not DIR's QDQ graphs (opset 19
    from ModelOpt)."""
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
        opsets.append(opset)
    assert record["opset"] == max(opsets)
