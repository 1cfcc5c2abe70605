"""Eleventh hunt, c: `mfdeploy eval` on a quantized export directory (`mfdeploy quantize EXPORT --out DIR`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import one_error, run_cli

from mfdeploy.errors import UserError

SIZES = ["--images", "100", "--pairs", "100"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """The bundled model's fp32 export and its dynamic INT8 quantization (`--out`), made with the CLI."""
    root = tmp_path_factory.mktemp("round11c")
    export, quantized = root / "e", root / "q"
    assert run_cli(["export", "--out", str(export)]) == 0
    assert run_cli(["quantize", str(export), "--out", str(quantized), "--scheme", "dynamic"]) == 0
    return export, quantized


def _eval(path: Path, backend: str, out: Path) -> dict:
    assert run_cli(["eval", str(path), "--backend", backend, *SIZES, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def _close(got: dict, ref: dict) -> None:
    scores = {**got["tasks"], **got["retrieval"]}
    reference = {**ref["tasks"], **ref["retrieval"]}
    assert scores.keys() == reference.keys() and scores
    for name, value in scores.items():
        assert abs(value - reference[name]) <= 0.02, (name, value, reference[name])


def _no_gate_run(monkeypatch) -> None:
    """The INT8 towers are not gated again at evaluation (against themselves or anything): quantize gated them."""
    import mfdeploy.eval.precision as precision

    def refuse(*_a, **_k):
        raise AssertionError("eval re-ran a gate over the quantized towers")

    monkeypatch.setattr(precision, "_gated", refuse)


def test_a_quantized_export_is_evaluated_through_its_own_int8_towers(exported, tmp_path, monkeypatch):
    """It was refused ("an output of mfdeploy (export.json), not a model checkpoint")."""
    export, quantized = exported
    reference = _eval(export, "onnx", tmp_path / "fp32.json")
    _no_gate_run(monkeypatch)
    got = _eval(quantized, "onnx-int8", tmp_path / "int8.json")
    assert got["model"] == "mfdeploy/clip-shapes" and got["backend"] == "onnx-int8"
    assert all("int8" in p for p in got["precision"].values()), got["precision"]
    _close(got, reference)
    # the gate is the one quantize ran against the fp32 export (named), as recorded: not a self-comparison at 1.0
    parity = json.loads((quantized / "quantize.json").read_text())["parity"]
    gate = got["gate"]
    assert str(export.resolve()) in gate["reference"] and "quantize.json" in gate["recorded"] and gate["passed"]
    for tower in ("vision", "text"):
        assert gate[tower]["min_cosine"] == parity[tower]["min_cosine"] < 1.0


@pytest.mark.parametrize("backend", [None, "onnx", "openvino", "torch"])
def test_a_quantized_export_names_the_backend_that_runs_it(exported, backend, capsys):
    _export, quantized = exported
    argv = ["eval", str(quantized)] + (["--backend", backend] if backend else [])
    assert run_cli(argv) != 0
    line = one_error(capsys)
    assert f"--backend {backend or 'torch'}: {quantized} is a quantized export directory" in line
    assert line.endswith("evaluate it with --backend onnx-int8"), line


def test_a_changed_int8_tower_is_named_before_it_runs(exported, tmp_path):
    import mfdeploy

    export, quantized = exported
    copy = tmp_path / "q"
    shutil.copytree(quantized, copy)
    (copy / "vision.onnx").write_bytes((export / "vision.onnx").read_bytes())  # the fp32 tower, not the INT8 one
    with pytest.raises(UserError, match=r"vision\.onnx: .*export\.json"):
        mfdeploy.evaluate(str(copy), backend="onnx-int8", n_images=20, n_retrieval=20)


def test_fp8_qdq_towers_say_they_run_in_f32(exported, tmp_path):
    """TensorRT's fp8 QDQ towers (`--target trt --mode fp8`) run on ONNX Runtime's CPU as dequantized f32 matmuls,
    as `serve --backend ort-cpu` says of them: the result's precision says so, not int8."""
    import hashlib

    import mfdeploy

    _export, quantized = exported
    copy = tmp_path / "q"
    shutil.copytree(quantized, copy)
    record = json.loads((copy / "quantize.json").read_text())
    (copy / "quantize.json").write_text(json.dumps({**record, "mode": "fp8"}))  # recorded in export.json again
    raw = (copy / "quantize.json").read_bytes()
    manifest = json.loads((copy / "export.json").read_text())
    manifest["files"]["quantize.json"] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    (copy / "export.json").write_text(json.dumps(manifest))
    got = mfdeploy.evaluate(str(copy), backend="onnx-int8", n_images=20, n_retrieval=20)
    assert got["precision"] == {"vision": "f32", "text": "f32"} and got["gate"]["precision"] == "f32"


def test_tensorrt_qdq_towers_are_evaluated_on_onnx_runtime_cpu(exported, tmp_path, monkeypatch):
    """`--target trt` writes QDQ towers for TensorRT; ONNX Runtime's CPU runs them too (as `serve --backend
    ort-cpu` does), so eval measures their accuracy without a GPU."""
    pytest.importorskip("modelopt")
    export, quantized = exported
    qdq = tmp_path / "qt"
    assert run_cli(["quantize", str(export), "--out", str(qdq), "--target", "trt", "--calib-samples", "16"]) == 0
    _no_gate_run(monkeypatch)
    got = _eval(qdq, "onnx-int8", tmp_path / "qdq.json")
    _close(got, _eval(export, "onnx", tmp_path / "fp32.json"))
    assert got["precision"] == {"vision": "int8+f32", "text": "int8+f32"}
    assert got["gate"]["vision"]["min_cosine"] < 1.0 and got["gate"]["passed"]
