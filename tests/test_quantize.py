"""The quantize stage: int8 weights in the graphs, parity on real inputs, the gate, every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import export_with_cli
from onnx import numpy_helper

from mfdeploy.cli import main
from mfdeploy.errors import UserError
from mfdeploy.quantize import QuantizeConfig, check_towers, gate_feeds, quantize_towers


@pytest.fixture(scope="module")
def wide_clip_dir(tmp_path_factory) -> Path:
    """Tiny, but wide enough (128) that the weights, not the graph's structure, make the file size."""
    from conftest import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("wide_clip"), width=128)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, wide_clip_dir) -> Path:
    return export_with_cli(tmp_path_factory, wide_clip_dir, "qexport")


@pytest.fixture(scope="module")
def adapter(wide_clip_dir):
    from mfdeploy.models import load

    return load(wide_clip_dir)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, exported) -> dict[str, Path]:
    """Both targets through the CLI, once per module."""
    root = tmp_path_factory.mktemp("quantized")
    for target in ("ort", "trt"):
        main(["quantize", str(exported), "--out", str(root / target), "--target", target, "--calib-samples", "16",
              "--calib", "shapes"])
    return {"ort": root / "ort", "trt": root / "trt"}


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err.strip()


def _int8_weights(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).size for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.INT8)


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_graphs_hold_int8_weights_and_are_smaller(quantized, exported, target):
    record = json.loads((quantized[target] / "quantize.json").read_text())
    assert record["target"] == target and record["mode"] == "int8"
    assert record["calibration"]["samples"] == 16
    for tower in ("vision", "text"):
        q, fp = quantized[target] / f"{tower}.onnx", exported / f"{tower}.onnx"
        rec = record["towers"][tower]
        # every quantized weight node holds int8 weights: q/k/v/out_proj, fc1, fc2 of 2 layers at least
        assert _int8_weights(q) >= 2 * (4 * 128 * 128 + 2 * 128 * 512)
        assert q.stat().st_size < 0.45 * fp.stat().st_size, (tower, q.stat().st_size, fp.stat().st_size)
        assert rec["bytes"] == q.stat().st_size
        assert any(n.endswith("projection/MatMul") for n in rec["float_nodes"])  # kept exact, with a reason
        assert all(rec["float_nodes"].values())


def test_quantizing_leaves_the_source_towers_as_exported(quantized, exported):
    """ModelOpt rewrote the graph it was handed (`--target trt` changed an export's fp32 towers on disk); it is
    given a copy now, and the source still matches the sha256 export.json records."""
    from mfdeploy.models.integrity import verify_artifacts

    assert set(quantized) == {"ort", "trt"}
    checked = verify_artifacts(exported, ("",), manifests=("export.json",))
    assert {"vision.onnx", "text.onnx", "parity_inputs.npz"} <= set(checked)


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_parity_on_real_inputs(quantized, exported, adapter, target):
    """Recompute the cosine here (not from the record) on the gate's real inputs: >= 0.99 per row."""
    import onnxruntime as ort

    record = json.loads((quantized[target] / "quantize.json").read_text())
    for tower, runs in gate_feeds(adapter).items():
        ref = ort.InferenceSession(str(exported / f"{tower}.onnx"), providers=["CPUExecutionProvider"])
        got = ort.InferenceSession(str(quantized[target] / f"{tower}.onnx"), providers=["CPUExecutionProvider"])
        for _label, feed in runs:
            a, b = ref.run(None, feed)[0], got.run(None, feed)[0]
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            assert cos.min() >= 0.99, (tower, _label, cos.min())
            assert not np.array_equal(a, b)  # the quantized graph really is another computation
        assert record["parity"][tower]["min_cosine"] >= 0.99 and record["parity"][tower]["passed"]


def _break(path: Path) -> None:
    """Scramble every int8 weight: a graph that still runs but computes nonsense."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2:  # weights, not zero points (ORT < 1.24
            # refuses a non-zero int8 weight zero point at run time instead of computing with it)
            arr = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(rng.integers(-127, 128, arr.shape).astype(np.int8), t.name))
    onnx.save(model, str(path))


def test_gate_fails_on_a_broken_graph(quantized, exported, adapter, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for tower in ("vision", "text"):
        (broken / f"{tower}.onnx").write_bytes((quantized["ort"] / f"{tower}.onnx").read_bytes())
    _break(broken / "vision.onnx")
    gate = check_towers(exported, broken, gate_feeds(adapter))
    assert not gate["passed"] and not gate["vision"]["passed"] and gate["text"]["passed"]
    assert gate["vision"]["min_cosine"] < 0.9


def test_a_tower_the_runtime_cannot_run_fails_the_gate_in_one_line(exported, adapter, tmp_path):
    """A quantized tower ONNX Runtime cannot load (as ModelOpt's FP8 Q/DQ graph on ONNX Runtime 1.23, the newest for
    Python 3.10) is one line naming the tower and the runtime, not ONNX Runtime's own exception."""
    import onnxruntime

    q = tmp_path / "q"
    q.mkdir()
    for tower in ("vision", "text"):
        (q / f"{tower}.onnx").write_bytes((exported / f"{tower}.onnx").read_bytes())
    model = onnx.load(str(q / "vision.onnx"))
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, str(q / "vision.onnx"))
    with pytest.raises(UserError) as e:
        check_towers(exported, q, gate_feeds(adapter))
    line = str(e.value)
    assert line.startswith(f"vision.onnx: ONNX Runtime {onnxruntime.__version__} cannot run the quantized tower")
    assert "NoSuchOp" in line and "\n" not in line


def test_parity_failure_is_one_line_and_leaves_nothing(exported, tmp_path, capsys, monkeypatch):
    from mfdeploy.quantize import ort as qort

    real = qort.quantize_ort

    def broken(src, dst, *args, **kwargs):
        record = real(src, dst, *args, **kwargs)
        _break(dst)
        return record

    monkeypatch.setattr(qort, "quantize_ort", broken)
    out = tmp_path / "q"
    code, err = _run_cli(["quantize", str(exported), "--out", str(out), "--calib-samples", "8", "--calib", "shapes"],
                         capsys)
    assert code == 2 and "does not match the fp32 towers" in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["no towers", "fp8 on ort", "bad target", "bad scheme", "zero samples"])
def test_bad_inputs(case, exported, tmp_path, capsys):
    src, extra = str(exported), []
    if case == "no towers":
        src = str(tmp_path)
    extra = {"fp8 on ort": ["--mode", "fp8"], "bad target": ["--target", "cuda"], "bad scheme": ["--scheme", "x"],
             "zero samples": ["--calib-samples", "0"]}.get(case, [])
    out = tmp_path / "q"
    code, err = _run_cli(["quantize", src, "--out", str(out), *extra], capsys)
    expect = {"no towers": "no towers to quantize", "fp8 on ort": "no fp8 kernels", "bad target": "--target cuda",
              "bad scheme": "--scheme x", "zero samples": "must be positive"}[case]
    assert code == 2 and expect in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_too_few_pairs_warns_and_uses_them(exported, shapes_pairs_jsonl, tmp_path, capsys):
    out = tmp_path / "q"
    main(["quantize", str(exported), "--out", str(out), "--calib", str(shapes_pairs_jsonl),
          "--calib-samples", "50"])
    err = capsys.readouterr().err
    assert "warning:" in err and "12 calibration pairs, fewer than --calib-samples 50" in err
    record = json.loads((out / "quantize.json").read_text())
    assert record["calibration"]["samples"] == 12 and record["calibration"]["requested"] == 50


def test_dynamic_scheme_and_keep_float(exported, adapter, tmp_path):
    cfg = QuantizeConfig(scheme="dynamic", keep_float=["*layers.0/mlp/fc1*"])
    record = quantize_towers(adapter, exported, tmp_path, cfg)
    assert record["calibration"]["samples"] == 0  # dynamic: ranges from each batch, no calibration
    kept = record["towers"]["vision"]["float_nodes"]
    assert "/vision_model/encoder/layers.0/mlp/fc1/MatMul" in kept
    assert "/vision_model/encoder/layers.0/mlp/fc1/MatMul" not in record["towers"]["vision"]["quantized_nodes"]
    assert record["parity"]["passed"]


def test_dynamic_conv_stays_float_on_a_runtime_without_int8_conv_integer(exported, adapter, tmp_path, monkeypatch):
    """ONNX Runtime before 1.24 (the newest for Python 3.10) has ConvInteger for uint8 weights only: there the
    dynamic scheme leaves the patch Conv float and says so, instead of writing a graph the runtime refuses."""
    import onnx
    import onnxruntime
    from packaging.version import Version

    from mfdeploy.quantize import ort as ort_quant

    # the probe answers what the release notes say of this runtime
    assert ort_quant.conv_integer_int8() == (Version(onnxruntime.__version__).release >= (1, 24))
    monkeypatch.setattr(ort_quant, "conv_integer_int8", lambda: False)
    record = quantize_towers(adapter, exported, tmp_path, QuantizeConfig(scheme="dynamic"))
    vision = record["towers"]["vision"]
    convs = [n for n, why in vision["float_nodes"].items() if "ConvInteger" in why]
    assert convs == ["/vision_model/embeddings/patch_embedding/Conv"]
    assert convs[0] not in vision["quantized_nodes"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "vision.onnx")).graph.node}
    assert "Conv" in ops and "ConvInteger" not in ops and "MatMulInteger" in ops
    assert record["parity"]["passed"]


def test_build_directory_source(exported, tmp_path):
    """A build directory resolves to its onnx/ towers and itself (its pruned/ checkpoint); without onnx/ it fails."""
    from mfdeploy.quantize import resolve_source

    (tmp_path / "build.json").write_text("{}")
    with pytest.raises(UserError, match="no such directory"):
        resolve_source(tmp_path)
    (tmp_path / "onnx").mkdir()
    for tower in ("vision", "text"):
        (tmp_path / "onnx" / f"{tower}.onnx").write_bytes((exported / f"{tower}.onnx").read_bytes())
    assert resolve_source(tmp_path) == (tmp_path / "onnx", str(tmp_path))


def test_quantize_writes_nothing_into_the_working_directory(exported, tmp_path, monkeypatch, capsys):
    """ONNX Runtime's symbolic shape inference dumps a debug model into the working directory when it
    cannot finish (the text tower): that dump must not happen, and the process's working directory (which
    every thread shares) must not change on the way."""
    import os

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def no_chdir(path):
        raise AssertionError(f"os.chdir({path!r}) during quantize")

    monkeypatch.setattr(os, "chdir", no_chdir)
    for target in ("ort", "trt"):  # relative --out paths too: ModelOpt's worker runs in its own scratch folder
        main(["quantize", str(exported), "--out", f"../q_{target}", "--target", target, "--calib-samples", "8",
              "--calib", "shapes"])
        assert (tmp_path / f"q_{target}" / "quantize.json").is_file()
    assert list(work.iterdir()) == []


def test_auto_scheme_is_the_measured_choice_per_tower(exported, tmp_path):
    """`--scheme auto` (the default) gives each tower the scheme AUTO_SCHEME names, recorded per tower."""
    from mfdeploy.quantize.ort import AUTO_SCHEME

    main(["quantize", str(exported), "--out", str(tmp_path / "q"), "--calib-samples", "8", "--calib", "shapes"])
    record = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert record["scheme"] == "auto"
    assert {t: r["scheme"] for t, r in record["towers"].items()} == AUTO_SCHEME
    needs_calib = "static" in AUTO_SCHEME.values()
    assert (record["calibration"]["samples"] > 0) == needs_calib


def test_a_model_other_than_the_bundled_one_needs_calib(exported, wide_clip_dir, tmp_path, capsys):
    """The shapes world calibrates only the bundled model: others are refused up front, as `prune` does."""
    code, err = _run_cli(["quantize", str(exported), "--out", str(tmp_path / "q")], capsys)
    assert code == 2 and "--calib is required" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()
    code, err = _run_cli(["build", "--model", str(wide_clip_dir), "--method", "magnitude", "--int8",
                          "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "--int8 needs --calib" in err and not (tmp_path / "b").exists()
    main(["quantize", str(exported), "--out", str(tmp_path / "d"), "--scheme", "dynamic"])  # no calibration needed
    assert (tmp_path / "d" / "quantize.json").is_file()


def _ort_optimized(path: Path, tmp_path: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider actually runs, after its QDQ fusions."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)


def test_static_graph_runs_as_integer_matmuls_with_float_outputs(quantized, tmp_path):
    """The static vision tower: every quantized MatMul leaves its output float (no Q after it), so ONNX
    Runtime runs it as MatMulIntegerToFloat, not QLinearMatMul + DequantizeLinear; the patch Conv stays a
    QLinearConv; and no Shape reads a dequantized copy of a tensor it could read directly."""
    record = json.loads((quantized["ort"] / "quantize.json").read_text())
    assert record["towers"]["vision"]["scheme"] == "static"
    path = quantized["ort"] / "vision.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def made_by(name: str) -> str:
        return producer[name].op_type if name in producer else "input"

    matmuls = [n for n in graph.node if n.op_type == "MatMul" and made_by(n.input[1]) == "DequantizeLinear"]
    assert len(matmuls) >= 2 * 6  # q/k/v/out_proj, fc1, fc2 of 2 layers
    assert not [n.name for n in matmuls if any(c.op_type == "QuantizeLinear" for c in consumers[n.output[0]])]
    for shape in (n for n in graph.node if n.op_type == "Shape" and made_by(n.input[0]) == "DequantizeLinear"):
        # the one Shape left on a DQ copy reads the quantized Conv's output: moving it onto the Conv
        # would give the Conv a second consumer and undo its fusion
        q = producer[producer[shape.input[0]].input[0]]
        assert made_by(q.input[0]) == "Conv", shape.name
    ops = [n.op_type for n in _ort_optimized(path, tmp_path).graph.node]
    assert ops.count("MatMulIntegerToFloat") == len(matmuls) and "QLinearMatMul" not in ops
    assert ops.count("QLinearConv") == 1 and "Conv" not in ops
