"""Thirteenth hunt (a): advice that leads somewhere servable (`engine BUILD --int8` without onnx_qdq/), `eval` on the
towers of `quantize BUILD --out DIR`, `quantize --mode fp8` on an ONNX Runtime that cannot gate it, and the Python
API's `evaluate` reporting retention as the CLI does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import one_error, run_cli

import mfdeploy
from mfdeploy.errors import UserError

SMALL = dict(n_images=8, n_retrieval=8)


@pytest.fixture(scope="module")
def quantized_of_build(tiny_build, tmp_path_factory) -> Path:
    """`mfdeploy quantize BUILD --out DIR` (ONNX Runtime INT8, dynamic: no calibration): towers, quantize.json, no
    export.json."""
    out = tmp_path_factory.mktemp("r13a") / "q"
    assert run_cli(["quantize", str(tiny_build), "--scheme", "dynamic", "--out", str(out)]) == 0
    assert (out / "quantize.json").is_file() and not (out / "export.json").exists()
    return out


# ---- 1. engine BUILD --int8 without onnx_qdq/ -----------------------------------------------------------------------

def test_engine_int8_on_a_build_without_qdq_towers_names_routes_that_serve(tiny_build, capsys, monkeypatch):
    """The advice was `mfdeploy quantize BUILD --target trt --out QDQ`, then `mfdeploy engine QDQ --int8`: engines in
    a folder with no export.json, which neither `bench BUILD` nor `serve` reads. Now: build again with --int8 (its
    onnx_qdq/ into its engines/), or quantize an export of the build, whose folder `serve --backend trt` takes."""
    import mfdeploy.extras

    monkeypatch.setattr(mfdeploy.extras, "missing", lambda name: ["modelopt"] if name == "modelopt" else [])
    assert not (tiny_build / "onnx_qdq").exists()
    assert run_cli(["engine", str(tiny_build), "--int8"]) == 2
    line = one_error(capsys)
    b = str(tiny_build)
    assert line.startswith(f"error: {b}: build directory has no onnx_qdq/ (the QDQ towers INT8 engines are built "
                           "from): run `mfdeploy build` again with its options and --int8 (with NVIDIA ModelOpt's ONNX "
                           "quantizer: pip install 'mfdeploy[modelopt]')"), line
    assert f"writes {b}/onnx_qdq/, then `mfdeploy engine {b} --int8`" in line
    assert line.endswith(f"or `mfdeploy export {b} --out EXPORT`, `mfdeploy quantize EXPORT --target trt --out QDQ`, "
                         "then `mfdeploy engine QDQ --int8` and `mfdeploy serve QDQ --backend trt`"), line
    assert f"quantize {b} --target trt" not in line  # the folder that route writes serves nowhere
    assert not (tiny_build / "engines").exists()


def test_the_advised_export_route_gives_a_folder_that_serve_takes(tiny_build, tmp_path):
    """What the advice's second route makes is an export directory (export.json, model named): `serve --backend trt`
    resolves it, where the towers of `quantize BUILD --out` are refused."""
    from mfdeploy.server import ServeConfig
    from mfdeploy.server.source import _export

    exported = tmp_path / "exported"
    assert run_cli(["export", str(tiny_build), "--out", str(exported)]) == 0
    q = tmp_path / "qdq"
    assert run_cli(["quantize", str(exported), "--scheme", "dynamic", "--out", str(q)]) == 0  # as --target trt does
    served = _export(q, ServeConfig(build_dir=q, backend="trt").validate())
    assert served.kind == "export" and "quantized export" in served.label


def test_the_other_qdq_advice_names_the_folder_it_came_from(tiny_build, quantized_of_build, tmp_path, capsys,
                                                            monkeypatch):
    """`engine EXPORT --int8` on fp32 towers, and `engine DIR` on ONNX Runtime's INT8 towers, named `quantize SRC
    --target trt --out DIR`: from a build, DIR serves nowhere. They name the export, or the build's own routes."""
    import mfdeploy.extras

    monkeypatch.setattr(mfdeploy.extras, "missing", lambda name: [])  # ModelOpt present: no install hint
    exported = tmp_path / "exported"
    assert run_cli(["export", str(tiny_build), "--out", str(exported)]) == 0
    capsys.readouterr()
    assert run_cli(["engine", str(exported), "--int8"]) == 2
    assert one_error(capsys) == (f"error: --int8: {exported / 'vision.onnx'} holds no QuantizeLinear/DequantizeLinear "
                                 f"nodes; quantize it first: `mfdeploy quantize {exported} --target trt --out QDQ`, "
                                 "then `mfdeploy engine QDQ --int8` and `mfdeploy serve QDQ --backend trt`")
    assert run_cli(["engine", str(quantized_of_build)]) == 2
    line = one_error(capsys)
    b = str(tiny_build.resolve())  # quantize.json's source
    assert "which TensorRT cannot build" in line and f"which writes {b}/onnx_qdq/, then `mfdeploy engine {b} --int8`" \
        in line and f"`mfdeploy export {b} --out EXPORT`" in line and "pip install" not in line, line


def test_a_build_without_modelopt_records_a_route_to_qdq_towers_that_serve(monkeypatch):
    import mfdeploy.extras
    from mfdeploy.quantize.build import qdq_skipped

    monkeypatch.setattr(mfdeploy.extras, "missing", lambda name: ["modelopt"] if name == "modelopt" else [])
    why = qdq_skipped()
    assert why is not None and "quantize BUILD --target trt" not in why
    assert "pip install 'mfdeploy[modelopt]' and build again with --int8" in why
    assert "`mfdeploy export BUILD --out EXPORT`, then `mfdeploy quantize EXPORT --target trt --out QDQ`" in why
    monkeypatch.setattr(mfdeploy.extras, "missing", lambda name: [])
    assert qdq_skipped() is None


# ---- 2. eval on the towers of `quantize BUILD --out DIR` (the common cases: test_defects_round13_c.py) --

def test_eval_names_the_route_for_fp8_towers_and_for_a_lost_export_manifest(quantized_of_build, tiny_build, tmp_path):
    b = str(tiny_build.resolve())
    trt = tmp_path / "trt"
    shutil.copytree(quantized_of_build, trt)
    record = json.loads((trt / "quantize.json").read_text())
    (trt / "quantize.json").write_text(json.dumps({**record, "target": "trt", "mode": "fp8", "scheme": "static"}))
    with pytest.raises(UserError) as e:
        mfdeploy.evaluate(str(trt))
    assert str(e.value).endswith(f"quantize an export of the build instead (`mfdeploy export {b} --out EXPORT`, then "
                                 "`mfdeploy quantize EXPORT --target trt --mode fp8 --out DIR`) and evaluate DIR "
                                 "with backend onnx-int8")  # the API names its argument, not the CLI's option
    exported = tmp_path / "exported"
    assert run_cli(["export", str(tiny_build), "--out", str(exported)]) == 0
    (trt / "quantize.json").write_text(json.dumps({**record, "source": str(exported)}))  # export.json lost
    with pytest.raises(UserError, match=rf"^{trt}: quantized towers with no export.json .*: quantize the export they "
                                        rf"came from again \(`mfdeploy quantize {exported} --out DIR`\) and evaluate "
                                        r"DIR with backend onnx-int8$"):
        mfdeploy.evaluate(str(trt), backend="onnx-int8")


# ---- 3. quantize --mode fp8 on ONNX Runtime 1.23 ---------------------------------------------------------------------

@pytest.fixture()
def quantizer_calls(monkeypatch):
    """Every call into the quantizers and calibration: none may happen before the refusal."""
    import mfdeploy.quantize.calib as calib
    import mfdeploy.quantize.trt as trt

    calls: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} ran")
        return call

    monkeypatch.setattr(trt, "quantize_trt", refuse("quantize_trt"))
    monkeypatch.setattr(calib, "calibration_feeds", refuse("calibration_feeds"))
    return calls


@pytest.mark.parametrize("version", ["1.23.2", "1.20.0", "1.9.1"])
def test_fp8_on_an_onnx_runtime_that_cannot_gate_it_is_refused_before_any_work(tiny_build, tmp_path, capsys,
                                                                             monkeypatch, quantizer_calls, version):
    """It failed only at the parity gate, after calibrating and quantizing both towers with ModelOpt: ONNX Runtime
    1.23 (the newest for Python 3.10) cannot load ModelOpt's FP8 Q/DQ graph."""
    import onnxruntime

    import mfdeploy.extras

    monkeypatch.setattr(mfdeploy.extras, "missing", lambda name: [])  # ModelOpt's absence would be refused first
    monkeypatch.setattr(onnxruntime, "__version__", version)
    out = tmp_path / "fp8"
    assert run_cli(["quantize", str(tiny_build), "--target", "trt", "--mode", "fp8", "--out", str(out)]) == 2
    assert one_error(capsys) == (
        f"error: --mode fp8: ONNX Runtime {version} cannot run the FP8 Q/DQ towers ModelOpt writes (1.23 and older "
        "reject them; 1.32 runs them), so their parity with the fp32 towers could not be checked: upgrade it (pip "
        "install -U onnxruntime; releases after 1.23 need Python 3.11 or newer), or quantize with --mode int8")
    assert not out.exists() and quantizer_calls == []


@pytest.mark.parametrize("version", ["1.24.0", "1.32.0", "2.0.0", "1.24.0.dev20250101"])
def test_fp8_on_a_newer_onnx_runtime_is_let_through(monkeypatch, version):
    import onnxruntime

    from mfdeploy.quantize import QuantizeConfig, validate

    monkeypatch.setattr(onnxruntime, "__version__", version)
    validate(QuantizeConfig(target="trt", mode="fp8"))  # no refusal
    monkeypatch.setattr(onnxruntime, "__version__", "1.23.2")
    with pytest.raises(UserError, match=r"^--mode fp8: ONNX Runtime 1\.23\.2 cannot run"):
        validate(QuantizeConfig(target="trt", mode="fp8"))
    validate(QuantizeConfig(target="trt", mode="int8"))  # int8 Q/DQ runs on 1.23
    with pytest.raises(UserError, match=r"^--mode fp8 needs --target trt"):
        validate(QuantizeConfig(target="ort", mode="fp8"))


def test_in_place_fp8_is_refused_for_in_place_not_for_the_runtime(tiny_build, capsys, monkeypatch):
    """`--in-place` never takes fp8: saying to upgrade ONNX Runtime first sent the user on a needless errand."""
    import onnxruntime

    import mfdeploy.extras

    monkeypatch.setattr(mfdeploy.extras, "missing", lambda name: [])
    monkeypatch.setattr(onnxruntime, "__version__", "1.23.2")
    assert run_cli(["quantize", str(tiny_build), "--in-place", "--target", "trt", "--mode", "fp8"]) == 2
    assert one_error(capsys).startswith("error: --in-place rewrites a build's onnx_int8/ (--target ort, --mode int8)")


# ---- 4. evaluate's retention, as the CLI's ---------------------------------------------------------------------------

def test_the_api_reports_retention_for_a_build_as_the_cli_does(tiny_build, tmp_path):
    """`mfdeploy eval BUILD` shows retention against the dense model; `mfdeploy.evaluate(BUILD)` returned none unless
    asked (retention=False by default)."""
    from mfdeploy.cli import main

    json_path = tmp_path / "eval.json"
    main(["eval", str(tiny_build), "--images", "8", "--pairs", "8", "--json", str(json_path)])
    cli = json.loads(json_path.read_text())
    api = mfdeploy.evaluate(str(tiny_build), **SMALL)
    assert "retention" in cli and set(api) >= {"dense", "retention"}
    assert api["retention"] == cli["retention"] and api["tasks"] == cli["tasks"]
    skipped = mfdeploy.evaluate(str(tiny_build), retention=False, **SMALL)
    assert "retention" not in skipped and "dense" not in skipped and skipped["tasks"] == api["tasks"]


def test_the_default_says_nothing_for_a_model_without_a_dense_reference(tiny_clip_dir):
    result = mfdeploy.evaluate(str(tiny_clip_dir), **SMALL)
    assert not {"retention", "dense", "retention_error"} & set(result)
