"""The OpenVINO backends and the precision gate: OpenVINO f32 matches ONNX Runtime, `auto` is the CPU's native
precision, every precision below fp32 (OpenVINO bf16, torch bf16) is checked against the fp32 towers and refused
in one line when it falls under the gate, and the bench, eval and serve say which precision ran."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from mfdeploy.cli import main
from mfdeploy.errors import UserError
from mfdeploy.runtime import BackendUnavailable, BuildDir, OrtRunner, make_runner
from mfdeploy.runtime import gate as gate_mod
from mfdeploy.runtime.gate import GateRefused

ov = pytest.importorskip("openvino")

from mfdeploy.runtime.openvino_runner import (  # noqa: E402 - after the skip: these need openvino
    OpenVinoRunner,
    cpu_capabilities,
    resolve_precision,
)

TOWERS = ("vision", "text")
BF16 = "BF16" in cpu_capabilities()
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no native BF16")
FAST = dict(warmup=1, iters=2, min_time=0.0, threads=1)


@pytest.fixture(scope="module")
def build(tiny_clip_dir, tmp_path_factory) -> Path:
    """A tiny build with its parity inputs (onnx/parity_inputs.npz) and INT8 towers (onnx_int8/)."""
    out = tmp_path_factory.mktemp("openvino_build") / "build"
    main(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--calib", "shapes", "--calib-samples", "16",
          "--int8", "--out", str(out)])
    return out


def _feeds(build: Path) -> dict[str, list[tuple]]:
    with np.load(build / "onnx" / "parity_inputs.npz") as z:
        pv, ids, mask = z["pixel_values"], z["input_ids"], z["attention_mask"]
    first = int(mask[0].sum())
    return {"vision": [(pv,), (pv[:1],)], "text": [(ids, mask), (ids[:1, :first], mask[:1, :first])]}


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("folder", ["onnx", "onnx_dense", "onnx_int8"])
def test_f32_matches_onnx_runtime_on_the_same_graph(build, folder):
    ovr, ort = OpenVinoRunner(build / folder, precision="f32", threads=1), OrtRunner(build / folder, threads=1)
    assert ovr.precision == "f32"
    for tower, runs in _feeds(build).items():
        call = "embed_images" if tower == "vision" else "embed_texts"
        for args in runs:
            got, want = getattr(ovr, call)(*args), getattr(ort, call)(*args)
            assert got.shape == want.shape and got.dtype == np.float32
            assert _min_cos(got, want) >= 0.99999, (folder, tower, args[0].shape)


def test_auto_is_what_the_cpu_runs_natively_and_is_read_back(build):
    assert resolve_precision("auto", ["BF16", "FP32", "INT8"])[0] == "bf16"
    assert resolve_precision("auto", ["FP32", "FP16", "INT8"])[0] == "f16"  # an Arm CPU
    assert resolve_precision("auto", ["FP32", "INT8"])[0] == "f32"
    chosen, why = resolve_precision("auto", cpu_capabilities())
    runner = OpenVinoRunner(build / "onnx", threads=1)
    assert runner.precision == chosen and why == runner.precision_note and "capabilities" in why
    for tower in TOWERS:  # the compiled model's own hint, and its matmuls in that precision
        assert str(runner.compiled[tower].get_property("INFERENCE_PRECISION_HINT").get_type_name()) == chosen
        assert runner.tower_precision(tower) == chosen


def test_a_precision_the_cpu_lacks_is_refused_not_swapped(build):
    with pytest.raises(BackendUnavailable, match=r"--precision bf16: this CPU has no native BF16 .*auto or f32"):
        resolve_precision("bf16", ["FP32", "INT8"])
    with pytest.raises(UserError, match="--precision bf32: choose one of auto, f32, bf16, f16"):
        resolve_precision("bf32", ["FP32"])
    if "FP16" not in cpu_capabilities():  # e.g. x86 without AVX-512 FP16: OpenVINO would quietly run bf16/f32
        with pytest.raises(BackendUnavailable, match="no native FP16"):
            make_runner("openvino", build, precision="f16")


@needs_bf16
def test_bf16_passes_the_gate_and_keeps_its_record(build):
    with BuildDir(build) as b:
        for variant, bound in (("pruned", 0.9995), ("dense", 0.9995), ("int8", 0.99)):
            runner = make_runner("openvino", b, variant=variant, precision="bf16", threads=1)
            rec = runner.gate
            assert rec["passed"] and rec["min_cosine_required"] == bound and rec["inputs"] == "onnx/parity_inputs.npz"
            assert all(bound <= rec[t]["min_cosine"] < 1.0 for t in TOWERS)  # bf16 rounds: below 1, above the gate
            # the gate's number is the real cosine against ONNX Runtime's fp32 towers
            ids, mask = _feeds(build)["text"][0]
            folder = "onnx_dense" if variant == "dense" else "onnx"
            assert _min_cos(runner.embed_texts(ids, mask), OrtRunner(build / folder).embed_texts(ids, mask)) >= bound
        assert runner.tower_precision("vision") == "int8+bf16"  # the INT8 graph's integer layers, read back


def test_a_tower_under_the_gate_is_refused_with_its_cosine(build, monkeypatch, capsys):
    """OpenVINO's vision embeddings nudged off the fp32 towers: refused, naming vision and its cosine, not text."""
    real = OpenVinoRunner.embed_images
    closed = []

    def nudged(self, pixel_values):
        out = real(self, pixel_values)
        out[:, 0] += 0.05  # cosine ~0.999: under the f32 gate (0.9999)
        return out

    monkeypatch.setattr(OpenVinoRunner, "embed_images", nudged)
    monkeypatch.setattr(OpenVinoRunner, "close", lambda self: closed.append(self))
    with pytest.raises(GateRefused) as refused:
        make_runner("openvino", build, precision="f32", threads=1)
    message = str(refused.value)
    assert message.startswith("openvino f32 (onnx/) refused: vision min cosine 0.99") and "text" not in message
    assert ">= 0.9999" in message and "onnx/parity_inputs.npz" in message and len(closed) == 1
    # the bench times nothing under the gate: the variant is a row that says why
    from mfdeploy.bench import run_bench

    rows = run_bench(build, backends=["openvino"], towers=["vision"], batch_sizes=[1], dense=False, int8=False,
                     write=False, precision="f32", **FAST)
    assert not [r for r in rows if "throughput" in r]
    assert [r["reason"] for r in rows] == [message]
    # eval and serve: one line, exit 2
    assert run_cli(["eval", str(build), "--backend", "openvino", "--precision", "f32", "--images", "8",
                    "--pairs", "8", "--no-retention"]) == 2
    assert "vision min cosine 0.99" in _one_line(capsys)


def test_torch_bf16_is_gated_and_leaves_the_shared_model_alone(build, monkeypatch):
    with BuildDir(build) as b:
        runner = make_runner("torch", b, dtype="bfloat16", threads=1)
        assert runner.precision == "bf16" and runner.gate["passed"] and runner.gate["reference"] == "torch fp32"
        assert all(0.9995 <= runner.gate[t]["min_cosine"] < 1.0 for t in TOWERS)
        assert str(next(b.adapter("pruned").model.parameters()).dtype) == "torch.float32"
        assert make_runner("torch", b, threads=1).precision == "f32"
        monkeypatch.setitem(gate_mod.MIN_COSINE, "bf16", 1.5)  # no cosine reaches it
        with pytest.raises(GateRefused, match=r"torch bf16 \(pruned\) refused: vision min cosine 0\.99\d+; text min "
                                              r"cosine 0\.99\d+ .*use --dtype float32"):
            make_runner("torch", b, dtype="bfloat16", threads=1)


def test_missing_openvino_is_one_line_naming_the_extra(build, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    extra = "OpenVINO is not installed: pip install 'mfdeploy[openvino]'"
    with pytest.raises(BackendUnavailable, match=extra.replace("[", r"\[").replace("]", r"\]")):
        make_runner("openvino", build)
    assert run_cli(["eval", str(build), "--backend", "openvino-int8"]) == 2  # the CLI's check of the extras
    line = _one_line(capsys)
    assert line.startswith("error: eval --backend openvino-int8 needs OpenVINO") and line.endswith(extra[-32:]), line
    from mfdeploy import api  # the Python API says it too, before the model loads

    with pytest.raises(UserError, match=r"^backend openvino: OpenVINO is not installed: pip install"):
        api.evaluate(str(build), backend="openvino")
    from mfdeploy.bench import run_bench

    rows = run_bench(build, backends=["openvino", "ort-cpu"], towers=["text"], batch_sizes=[1], write=False, **FAST)
    assert {r["reason"] for r in rows if r.get("status") == "unavailable"} == {extra}
    assert {r["backend"] for r in rows if "throughput" in r} == {"ort-cpu"}


@pytest.mark.parametrize("argv, message", [
    (["bench", "{b}", "--backends", "openvino", "--precision", "bf32"], "--precision bf32: choose one of auto, f32"),
    (["bench", "{b}", "--backends", "ort-cpu", "--precision", "f32"], "--precision f32: it applies to the openvino"),
    (["bench", "{b}", "--backends", "torch", "--dtype", "float16"], "--dtype float16: choose one of float32, bfloat16"),
    (["bench", "{b}", "--backends", "openvino", "--dtype", "bfloat16"], "--dtype bfloat16: it applies to the torch"),
    (["bench", "{b}", "--backends", "ort-cpu", "--compile"], "--compile: it applies to the torch and torch-cuda"),
    (["serve", "{b}", "--backend", "ort-cpu", "--compile"], "--compile: applies to --backend torch"),
    (["eval", "{b}", "--backend", "onnx", "--precision", "f32"], "--precision f32: applies to --backend openvino"),
    (["eval", "{b}", "--backend", "openvino", "--dtype", "bfloat16"], "--dtype bfloat16: applies to --backend torch"),
    (["eval", "{b}", "--backend", "openvino", "--precision", "int4"], "--precision int4: choose one of auto"),
    (["serve", "{b}", "--backend", "ort-cpu", "--precision", "bf16"], "--precision bf16: applies to --backend "
                                                                     "openvino or openvino-int8, not ort-cpu"),
    (["serve", "{b}", "--backend", "torch", "--dtype", "half"], "--dtype half: choose one of float32, bfloat16"),
    (["serve", "{b}", "--backend", "openvino", "--precision", "fp8"], "--precision fp8: choose one of auto, f32"),
])
def test_cli_refuses_bad_precision_options_in_one_line(build, capsys, argv, message):
    assert run_cli([a.replace("{b}", str(build)) for a in argv]) == 2
    line = _one_line(capsys)
    assert line.startswith("error:") and message in line, line


def test_bench_rows_say_the_precision_that_ran(build, tmp_path):
    from mfdeploy.bench import run_bench

    rows = run_bench(build, backends=["ort-cpu", "openvino", "torch"], towers=["vision"], batch_sizes=[1],
                     dtype="bfloat16", json_path=tmp_path / "rows.json", **FAST)
    timed = {(r["backend"], r["variant"]): r for r in rows if "throughput" in r}
    native = resolve_precision("auto", cpu_capabilities())[0]
    assert timed["ort-cpu", "pruned"]["precision"] == timed["ort-cpu", "dense"]["precision"] == "f32"
    assert timed["ort-cpu", "int8"]["precision"] == "int8+f32"
    assert timed["openvino", "pruned"]["precision"] == timed["openvino", "dense"]["precision"] == native
    assert timed["openvino", "int8"]["precision"] == f"int8+{native}"
    assert timed["torch", "pruned"]["precision"] == timed["torch", "dense"]["precision"] == "bf16"
    assert timed["ort-cpu", "pruned"]["gate_min_cosine"] is None  # fp32 as exported: nothing to gate
    assert timed["openvino", "pruned"]["gate_min_cosine"] >= gate_mod.threshold(native, "pruned")
    md = (build / "bench.md").read_text()
    assert "| precision |" in md and "int8 precision" in md and f"| int8+{native} |" in md
    written = {(r["backend"], r["variant"]): r["precision"] for r in json.loads((tmp_path / "rows.json").read_text())
               if "throughput" in r}
    assert written == {k: r["precision"] for k, r in timed.items()}


def test_eval_reports_the_precision_and_its_gate(build, tmp_path):
    from mfdeploy import api

    result = api.evaluate(str(build), backend="openvino-int8", precision="f32", retention=True, n_images=16,
                          n_retrieval=16)
    assert result["backend"] == "openvino-int8" and result["precision"]["vision"] == "int8+f32"
    assert result["gate"]["passed"] and result["gate"]["min_cosine_required"] == gate_mod.INT8_MIN_COSINE
    assert result["gate"]["reference"] == "torch fp32" and "retention" in result
    assert result["dense"]["backend"] == "torch" and "gate" not in result["dense"]  # the reference stays fp32


def test_serve_config_and_state_carry_the_precision(build):
    from mfdeploy.server import ServeConfig, ServerState

    cfg = ServeConfig(build_dir=build, backend="openvino-int8", precision="f32").validate()
    assert cfg.runner_options() == {"precision": "f32"}
    assert ServeConfig(build_dir=build, backend="ort-cpu").validate().runner_options() == {}
    state = ServerState(cfg)
    state.load()
    try:
        assert state.runner.name == "openvino" and state.runner.precision == "f32"
        assert state.runner.gate["passed"] and state.runner.tower_precision("vision") == "int8+f32"
    finally:
        state.runner.close()
        state._executor.shutdown(wait=False)
    with pytest.raises(UserError, match="--dtype bfloat16: applies to --backend torch or torch-cuda or "
                                        "torch-cuda-sparse, not openvino"):
        ServeConfig(build_dir=build, backend="openvino", dtype="bfloat16").validate()


def test_a_dynamic_int8_tower_is_named_with_the_fix_and_a_static_one_runs_int8(build, tmp_path, caplog):
    """The build's INT8 text tower is dynamic (ONNX Runtime's choice): OpenVINO runs it in float, and the runner
    says so with the command that fixes it; quantized statically, the same tower runs its matmuls in INT8."""
    import logging

    from mfdeploy.runtime.openvino_runner import dynamic_int8

    assert dynamic_int8(build / "onnx_int8" / "text.onnx") and not dynamic_int8(build / "onnx_int8" / "vision.onnx")
    with caplog.at_level(logging.WARNING, logger="mfdeploy.runtime.openvino_runner"):
        runner = OpenVinoRunner(build / "onnx_int8", towers=("text",))
    assert "int8" not in runner.tower_precision("text")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "dynamic INT8" in warned[0] and "--scheme static" in warned[0]
    static = tmp_path / "static"
    main(["quantize", str(build), "--out", str(static), "--scheme", "static", "--calib", "shapes",
          "--calib-samples", "16"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mfdeploy.runtime.openvino_runner"):
        runner = OpenVinoRunner(static, towers=("text",))
    assert runner.tower_precision("text").startswith("int8") and not caplog.records
    ids, mask = _feeds(build)["text"][0]
    ref = OrtRunner(build / "onnx", towers=("text",)).embed_texts(ids, mask)
    assert _min_cos(ref, runner.embed_texts(ids, mask)) > 0.99  # a tiny random model: INT8 noise, not garbage


def test_build_int8_scheme_static_gives_openvino_int8_towers(tiny_clip_dir, tmp_path, capsys):
    """`mfdeploy build --int8 --int8-scheme static`: both INT8 towers are static QDQ graphs, which OpenVINO runs
    in INT8, recorded as such in build.json; a bad scheme, or one without --int8, is refused before any work."""
    out = tmp_path / "build"
    main(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--calib", "shapes", "--calib-samples", "16",
          "--int8", "--int8-scheme", "static", "--out", str(out)])
    from mfdeploy.runtime.openvino_runner import dynamic_int8

    assert not any(dynamic_int8(out / "onnx_int8" / f) for f in ("vision.onnx", "text.onnx"))
    towers = json.loads((out / "build.json").read_text())["quantize"]["onnx_int8"]["towers"]
    assert {t: r["scheme"] for t, r in towers.items()} == {"vision": "static", "text": "static"}
    runner = OpenVinoRunner(out / "onnx_int8")
    assert all(runner.tower_precision(t).startswith("int8") for t in TOWERS)
    capsys.readouterr()  # the build's own progress lines
    for argv, message in ((["--int8", "--int8-scheme", "fast"], "--int8-scheme fast: expected one of"),
                          (["--int8-scheme", "static"], "--int8-scheme static needs --int8")):
        with pytest.raises(SystemExit) as e:
            main(["build", "--model", str(tiny_clip_dir), "--calib", "shapes", *argv, "--out", str(tmp_path / "x")])
        assert e.value.code == 2 and message in _one_line(capsys)
        assert not (tmp_path / "x").exists()
