"""Tenth hunt, the lead's own finds."""

from __future__ import annotations

import json

import pytest
from helpers import export_onnx

import mfdeploy
from mfdeploy.errors import UserError
from mfdeploy.tuning.journal import _same_path


def test_a_tune_record_with_a_home_relative_path_matches_the_same_file(tmp_path, monkeypatch):
    """`_same_path` checked `Path(old).exists()` before expanding `~`: an older tune's `~/pairs.jsonl` never matched
    the absolute path a resume records now, and the resume was refused as "different settings"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    assert _same_path("~/pairs.jsonl", str(data))
    assert not _same_path("~/other.jsonl", str(data))


def test_an_export_directory_is_evaluated_through_its_own_towers(tmp_path):
    """`mfdeploy eval EXPORT_DIR --backend onnx` was refused ("an output of mfdeploy (export.json), not a model
    checkpoint"), though eval's own message for a model without towers said to export it and evaluate DIR."""
    out = tmp_path / "exported"
    mfdeploy.export(mfdeploy.load(), out)
    sizes = dict(n_images=40, n_retrieval=40)
    got = mfdeploy.evaluate(str(out), backend="onnx", **sizes)
    direct = mfdeploy.evaluate(None, backend="onnx", **sizes)  # the bundled model, exported to a temporary folder
    assert got["model"] == direct["model"] == "mfdeploy/clip-shapes"
    assert got["tasks"] == direct["tasks"] and got["retrieval"] == direct["retrieval"]
    # its towers are the ones that run: a tower replaced since the export is named, not run
    other = tmp_path / "other"
    export_onnx(mfdeploy.load("mfdeploy/siglip-shapes"), other)
    (out / "vision.onnx").write_bytes((other / "vision.onnx").read_bytes())
    with pytest.raises(UserError, match=r"vision\.onnx: .*export\.json"):
        mfdeploy.evaluate(str(out), backend="onnx", **sizes)


def test_an_export_directory_is_refused_with_torch_and_without_its_model(tmp_path):
    out = tmp_path / "exported"
    mfdeploy.export(mfdeploy.load(), out)
    with pytest.raises(UserError, match=r"^backend torch: .*exported is an export directory of fp32 ONNX towers .*"
                                        r"evaluate it with backend onnx or openvino$"):  # the API's own names
        mfdeploy.evaluate(str(out))
    manifest = json.loads((out / "export.json").read_text())
    manifest["model"].pop("source")
    (out / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"export.json: names no model \('model.source'\)"):
        mfdeploy.evaluate(str(out), backend="onnx")
