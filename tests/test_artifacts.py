"""The artifact contract (issue 17): typed manifests, one write_json, one hasher, one platform probe."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest

from mfdeploy import platform
from mfdeploy.artifacts.io import file_records, sha256, write_json
from mfdeploy.artifacts.layout import BUILD_MANIFEST, ENGINE_FILES, ONNX_FILES, TOWERS
from mfdeploy.artifacts.manifest import BuildManifest, EngineRecord, source_model
from mfdeploy.errors import UserError

ENGINE = {"status": "skipped", "reason": "no CUDA GPU: x", "fp16": True, "int8": False,
          "sparse_weights": {"vision": True, "text": False},
          "profiles": {"vision": {"pixel_values": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32],
                                                   "max": [8, 3, 32, 32]}}},
          "trtexec": ["trtexec --onnx=vision.onnx"]}


def test_build_manifest_round_trip_and_typed_fields(tmp_path):
    data = {"model": "m", "method": "wanda", "ratio": 0.5, "pattern": "unstructured", "seed": 3,
            "engine": ENGINE, "engine_dense": None, "timings": {"load_s": 1.0},
            "artifacts": {"onnx/vision.onnx": {"sha256": "ab", "bytes": 4}}}
    (tmp_path / BUILD_MANIFEST).write_text(json.dumps(data))
    m = BuildManifest.read(tmp_path)
    assert (m.model, m.method, m.ratio, m.seed) == ("m", "wanda", 0.5, 3)
    assert m.engine is not None and m.engine.fp16 and m.engine.sparse and m.engine_dense is None
    assert m.engine.profile_max("vision", "pixel_values", 0) == 8 and m.engine.profile_max("text", "x", 1) is None
    assert m.tensorrt_flags() == (True, True)
    assert m.artifacts["onnx/vision.onnx"].sha256 == "ab"
    assert BuildManifest.from_json(m.to_json()) == m and m.to_json()["timings"] == {"load_s": 1.0}


@pytest.mark.parametrize("pattern,engine,expected", [
    ("2:4", None, (True, True)),  # no engine record: as a 2:4 build's engines
    ("unstructured", None, (False, False)),
    ("2:4", {"fp16": False, "sparse_weights": False}, (False, False)),  # recorded values win
    ("unstructured", {"fp16": True, "sparse_weights": {"vision": False, "text": True}}, (True, True)),
])
def test_tensorrt_flags_are_read_in_one_place(pattern, engine, expected):
    assert BuildManifest.from_json({"pattern": pattern, "engine": engine}).tensorrt_flags() == expected


def test_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not a build directory"):
        BuildManifest.read(tmp_path)
    (tmp_path / BUILD_MANIFEST).write_text("[1, 2]")
    with pytest.raises(UserError, match="not a manifest"):
        BuildManifest.read(tmp_path)
    (tmp_path / BUILD_MANIFEST).write_text("{oops")
    with pytest.raises(UserError, match="unreadable"):
        source_model(tmp_path)
    (tmp_path / BUILD_MANIFEST).write_text(json.dumps({"model": "openai/clip"}))
    assert source_model(tmp_path) == "openai/clip" and source_model(tmp_path / "nothing") is None


def test_engine_record_reads_engine_json(tmp_path):
    (tmp_path / "engine.json").write_text(json.dumps(ENGINE))
    rec = EngineRecord.read(tmp_path)
    assert rec.status == "skipped" and rec.reason.startswith("no CUDA") and rec.sparse_weights["vision"]


def test_one_write_json_keeps_each_callers_behaviour(tmp_path):
    out = write_json(tmp_path / "a" / "m.json", {"path": Path("/x"), "v": 1})  # manifests: paths as strings
    assert json.loads(out.read_text()) == {"path": "/x", "v": 1} and out.read_text().endswith("\n")
    with pytest.raises(ValueError):  # eval results: NaN refused, not written as a non-JSON token
        write_json(tmp_path / "r.json", {"acc": math.nan}, default=None, allow_nan=False)
    with pytest.raises(TypeError):  # bench rows: no silent str() of unknown values
        write_json(tmp_path / "rows.json", [{"p": Path("/x")}], default=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # failures leave no temporary file


def test_one_hasher(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub" / "b.bin").write_bytes(b"")
    deep = file_records(tmp_path, skip=("a.bin",))
    assert deep == {"sub/b.bin": {"sha256": sha256(tmp_path / "sub" / "b.bin"), "bytes": 0}}
    flat = file_records(tmp_path, recursive=False)
    assert flat == {"a.bin": {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                              "bytes": 3}}


def test_layout_is_the_tower_spec():
    assert ONNX_FILES == {"vision": "vision.onnx", "text": "text.onnx"}
    assert ENGINE_FILES == {"vision": "vision.plan", "text": "text.plan"}
    from mfdeploy.exporting.spec import TOWERS as EXPORT_TOWERS

    assert EXPORT_TOWERS is TOWERS  # the exporter reads the same dict the runners read


@pytest.mark.parametrize("attrs", [(), ("Builder",), ("Runtime",)])
def test_one_tensorrt_probe(attrs, monkeypatch):
    """Engine building and the trt runner ask the same probe: a partial `tensorrt` module fails both alike."""
    from mfdeploy.exporting import engine_status
    from mfdeploy.runtime.base import BackendUnavailable
    from mfdeploy.runtime.trt_runner import check_tensorrt

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0"
    for name in attrs:
        setattr(trt, name, object)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(platform, "cuda_device_count", lambda: (1, ""))
    probe = platform.tensorrt()
    assert not probe.ok and "TensorRT is not installed" in probe.reason
    assert engine_status() == {"status": "skipped", "reason": probe.reason}
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        check_tensorrt()
    trt.Builder = trt.Runtime = object
    assert platform.tensorrt().ok and engine_status()["status"] == "available"
    check_tensorrt()
