"""TensorRT engine stage without TensorRT: recorded polygraphy calls, log parsing, trtexec commands, CLI."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from conftest import NO_ENGINES, needs_no_engines
from helpers import sparsify_2to4

from mfdeploy.cli import main
from mfdeploy.exporting import (
    build_engines,
    check_parity,
    engine_status,
    export_towers,
    parse_sparsity_log,
    profile_shapes,
    trtexec_commands,
)

VISION_CMD = ("trtexec --onnx=vision.onnx --saveEngine=vision.plan --fp16 --sparsity=enable "
              "--minShapes=pixel_values:1x3x32x32 --optShapes=pixel_values:8x3x32x32 "
              "--maxShapes=pixel_values:8x3x32x32 --timingCacheFile=timing.cache")
TEXT_CMD = ("trtexec --onnx=text.onnx --saveEngine=text.plan --fp16 --sparsity=enable "
            "--minShapes=input_ids:1x1,attention_mask:1x1 --optShapes=input_ids:8x48,attention_mask:8x48 "
            "--maxShapes=input_ids:8x48,attention_mask:8x48 --timingCacheFile=timing.cache")

# What polygraphy's G_LOGGER holds after a TensorRT 10 build (TensorRT INFO -> [V], VERBOSE -> [X]).
SAMPLE_LOG = """\
[V] [MemUsageChange] Init CUDA: CPU +2, GPU +0, now: CPU 312, GPU 1021 (MiB)
[V] ----------------------------------------------------------------
[V] Input filename:   /work/build/onnx/vision.onnx
[V] ONNX IR version:  0.0.8
[V] Opset version:    17
[X] Parsing node: /vision_model/encoder/layers.0/self_attn/q_proj/MatMul [MatMul]
[V] Local timing cache in use. Profiling results in this builder pass will not be stored.
[V] (Sparsity) Layers eligible for sparse math: /vision_model/encoder/layers.0/self_attn/q_proj/MatMul + \
/vision_model/encoder/layers.0/self_attn/q_proj/Add, /vision_model/encoder/layers.0/mlp/fc1/MatMul, \
/vision_model/encoder/layers.0/mlp/fc2/MatMul
\x1b[38;5;13m[V] (Sparsity) TRT inference plan picked sparse implementation for layers: \
/vision_model/encoder/layers.0/mlp/fc1/MatMul\x1b[0m
[V] Total Activation Memory: 7864832
[W] Running layernorm after self-attention with FP16 Reduce or Pow may cause overflow.
"""


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory, tiny_clip_dir) -> Path:
    """Dense tiny export with the real parity inputs kept (parity_inputs.npz)."""
    from mfdeploy.models import load

    adapter = load(tiny_clip_dir)
    out = tmp_path_factory.mktemp("engine_dense")
    export_towers(adapter, out)
    check_parity(adapter, out, n=4, save_inputs=True)
    return out


@pytest.fixture(scope="module")
def sparse_dir(tmp_path_factory, tiny_clip_dir) -> Path:
    """2:4 tiny export without parity inputs (engine checks fall back to random feeds)."""
    from mfdeploy.models import load

    adapter = load(tiny_clip_dir)
    sparsify_2to4(adapter)
    out = tmp_path_factory.mktemp("engine_24")
    export_towers(adapter, out)
    return out


def test_parse_sparsity_log_polygraphy_sample():
    parsed = parse_sparsity_log(SAMPLE_LOG)
    assert parsed["reported"] and parsed["n_eligible"] == 3 and parsed["n_picked_sparse"] == 1
    assert parsed["eligible"][0] == ("/vision_model/encoder/layers.0/self_attn/q_proj/MatMul + "
                                     "/vision_model/encoder/layers.0/self_attn/q_proj/Add")
    assert parsed["picked_sparse"] == ["/vision_model/encoder/layers.0/mlp/fc1/MatMul"]


def test_parse_sparsity_log_trtexec_format_and_absence():
    log = ("[07/19/2022-11:58:20] [I] [TRT] (Sparsity) Layers eligible for sparse math: Conv_22, MatMul_51, Gemm_725\n"
           "[07/19/2022-11:58:20] [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers:\n")
    parsed = parse_sparsity_log(log)
    assert parsed["eligible"] == ["Conv_22", "MatMul_51", "Gemm_725"] and parsed["picked_sparse"] == []
    assert parse_sparsity_log("[V] Total Activation Memory: 7864832\n") == {
        "reported": False, "n_eligible": 0, "n_picked_sparse": 0, "eligible": [], "picked_sparse": []}


def test_profiles_and_trtexec_commands(dense_dir):
    profiles = profile_shapes(dense_dir, max_batch=8)
    assert profiles["text"]["input_ids"] == {"min": [1, 1], "opt": [8, 48], "max": [8, 48]}
    files = {"vision": ("vision.onnx", "vision.plan"), "text": ("text.onnx", "text.plan")}
    assert trtexec_commands(profiles, True, {"vision": True, "text": True}, files) == [VISION_CMD, TEXT_CMD]
    dense = trtexec_commands(profile_shapes(dense_dir, 4, 16, opt_batch=2), False, {}, files, timing_cache=None)
    assert dense[1] == ("trtexec --onnx=text.onnx --saveEngine=text.plan --minShapes=input_ids:1x1,attention_mask:1x1 "
                        "--optShapes=input_ids:2x16,attention_mask:2x16 --maxShapes=input_ids:4x16,attention_mask:4x16")




@needs_no_engines
def test_engine_status_without_tensorrt_or_gpu():
    assert NO_ENGINES["status"] == "skipped" and "\n" not in NO_ENGINES["reason"]
    try:
        import tensorrt
    except ImportError:
        tensorrt = None
    if tensorrt is None or not hasattr(tensorrt, "Builder"):
        assert NO_ENGINES["reason"].startswith("TensorRT is not installed")
    else:
        assert NO_ENGINES["reason"].startswith("no CUDA GPU")


@pytest.mark.parametrize("which,sparse,fp16,expect_sparse", [
    ("dense", "auto", True, False),
    ("sparse", "auto", True, True),
    ("dense", "on", False, True),
    ("sparse", "off", True, False),
])
def test_build_engines_calls_polygraphy_exactly(fake_trt, dense_dir, sparse_dir, tmp_path, which, sparse, fp16,
                                                 expect_sparse):
    onnx_dir = dense_dir if which == "dense" else sparse_dir
    out = tmp_path / "engines"
    record = build_engines(onnx_dir, fp16=fp16, sparse=sparse, max_batch=8, max_text_len=40, opt_batch=4,
                           out_dir=out)
    # built in a staging folder inside `out`, moved into `out` once every tower built and matched
    staged = Path(fake_trt["config"][0]["load_timing_cache"]).parent
    assert staged.parent == out and staged.name.startswith(".engines.tmp-") and not staged.exists()
    assert sorted(p.name for p in out.iterdir()) == ["engine.json", "text.plan", "text.trt.log", "vision.plan",
                                                     "vision.trt.log"]  # (the fake saves no timing cache)
    cache = str(staged / "timing.cache")
    assert engine_status()["status"] == "available"
    assert record["status"] == "built" and record["tensorrt"] == "10.13.0.35"
    assert record["sparse_weights"] == {"vision": expect_sparse, "text": expect_sparse}
    assert bool(record["notes"]) == (expect_sparse and not fp16)  # FP32 + sparse flag: dense kernels, and why
    # CreateConfig: precision, sparsity flag, one profile per tower, timing cache loaded from the build dir
    assert [c["fp16"] for c in fake_trt["config"]] == [fp16, fp16]
    assert [c["sparse_weights"] for c in fake_trt["config"]] == [expect_sparse, expect_sparse]
    assert [c["load_timing_cache"] for c in fake_trt["config"]] == [cache, cache]
    vision_profile, text_profile = (c["profiles"][0] for c in fake_trt["config"])
    assert all(len(c["profiles"]) == 1 for c in fake_trt["config"])
    assert list(vision_profile) == ["pixel_values"] and list(text_profile) == ["input_ids", "attention_mask"]
    assert (vision_profile["pixel_values"].min, vision_profile["pixel_values"].opt,
            vision_profile["pixel_values"].max) == ([1, 3, 32, 32], [4, 3, 32, 32], [8, 3, 32, 32])
    for name in ("input_ids", "attention_mask"):
        assert (text_profile[name].min, text_profile[name].opt, text_profile[name].max) == ([1, 1], [4, 40], [8, 40])
    # parse the ONNX files, build with the config, save the timing cache and the engines where asked
    assert [p for p, _ in fake_trt["network"]] == [str(onnx_dir / "vision.onnx"), str(onnx_dir / "text.onnx")]
    assert [b["save_timing_cache"] for b in fake_trt["build"]] == [cache, cache]
    assert [b["config"].kwargs for b in fake_trt["build"]] == fake_trt["config"]
    assert [p for _, p in fake_trt["save"]] == [str(staged / "vision.plan"), str(staged / "text.plan")]
    # the arguments exist in the real polygraphy API
    real = fake_trt["real"]
    for kwargs in fake_trt["config"]:
        inspect.signature(real["CreateConfig"]).bind(**kwargs)
    inspect.signature(real["engine_from_network"]).bind("network", config="config", save_timing_cache=cache)
    inspect.signature(real["network_from_onnx_path"]).bind(str(onnx_dir / "vision.onnx"))
    inspect.signature(real["save_engine"]).bind("engine", path=str(staged / "vision.plan"))
    inspect.signature(real["TrtRunner"]).bind("engine", name="tensorrt")
    # log captured to files and parsed; engine I/O read back; parity through polygraphy's Comparator
    for tower in ("vision", "text"):
        built = record["engines"][tower]
        assert built["sparsity"]["eligible"] == [f"{tower}/fc1/MatMul", f"{tower}/fc2/MatMul"]
        assert built["sparsity"]["picked_sparse"] == [f"{tower}/fc1/MatMul"]
        assert "Layers eligible for sparse math" in (out / built["log"]).read_text()
        assert (out / built["engine"]).read_bytes().startswith(b"fake plan")
        assert built["parity"]["passed"] and built["parity"]["comparator_passed"]
        assert built["parity"]["atol"] == (2e-2 if fp16 else 1e-3)
    assert record["engines"]["text"]["io"]["input_ids"]["profile"] == [[1, 1], [4, 40], [8, 40]]
    assert record["engines"]["vision"]["io"]["image_embeds"]["mode"] == "output"
    assert json.loads((out / "engine.json").read_text())["status"] == "built"


def test_engine_parity_failure_is_reported(fake_trt, dense_dir, tmp_path, monkeypatch):
    import polygraphy.backend.trt as ptrt
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    def wrong_runner(engine, name=None):
        """An "engine" whose embeddings point the other way: the Comparator and the cosine must both fail it."""
        runner = OnnxrtRunner(SessionFromOnnx(engine.onnx_path), name=name)
        real_infer = runner.infer_impl

        def infer_impl(feed_dict, *args, **kwargs):
            return {k: -v for k, v in real_infer(feed_dict, *args, **kwargs).items()}

        runner.infer_impl = infer_impl
        return runner

    monkeypatch.setattr(ptrt, "TrtRunner", wrong_runner)
    record = build_engines(dense_dir, max_batch=4, out_dir=tmp_path / "e")
    assert record["status"] == "parity_failed"
    # no plan of a failed build is left behind: only the record that says why
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["engine.json"]
    for tower in ("vision", "text"):
        parity = record["parity"][tower]
        assert not parity["passed"] and not parity["comparator_passed"] and parity["min_cosine"] < 0


@needs_no_engines
def test_cli_engine_without_tensorrt(dense_dir, capsys):
    main(["engine", str(dense_dir), "--fp16", "--sparse", "on", "--max-batch", "8"])  # returns: exit code 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"TensorRT engines not built: {NO_ENGINES['reason']}. Build them elsewhere")
    assert lines[1:] == [f"cd {dense_dir}", VISION_CMD, TEXT_CMD]  # the engines go beside the towers
    record = json.loads((dense_dir / "engine.json").read_text())
    assert record["status"] == "skipped" and record["trtexec"] == [VISION_CMD, TEXT_CMD]
    assert record["reason"] == NO_ENGINES["reason"]
    assert not (dense_dir / "vision.plan").exists()


@pytest.mark.parametrize("case", ["missing", "no towers", "too long", "bad sparse", "zero batch"])
def test_cli_engine_bad_inputs(case, dense_dir, tmp_path, capsys):
    target, extra = str(dense_dir), []
    if case == "missing":
        target = str(tmp_path / "nope")
    elif case == "no towers":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "vision.onnx").write_bytes(b"")
        target = str(tmp_path / "empty")
    elif case == "too long":
        extra = ["--max-text-len", "49"]
    elif case == "bad sparse":
        extra = ["--sparse", "maybe"]
    else:
        extra = ["--max-batch", "0"]
    with pytest.raises(SystemExit) as exc:
        main(["engine", target, *extra])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:")
    expected = {"missing": "no such directory", "no towers": "missing text.onnx",
                "too long": "--max-text-len 49 exceeds the model's 48", "bad sparse": "--sparse must be one of",
                "zero batch": "--max-batch must be"}[case]
    assert expected in err


def test_cli_engine_out_dir(fake_trt, dense_dir, tmp_path, capsys):
    """`--out` puts engines, logs and engine.json elsewhere (a build's engines/), leaving ONNX_DIR as it was."""
    before = sorted(p.name for p in dense_dir.iterdir())
    out = tmp_path / "engines_dense"
    main(["engine", str(dense_dir), "--sparse", "off", "--max-batch", "4", "--out", str(out)])
    printed = capsys.readouterr().out
    for tower in ("vision", "text"):
        assert f"{tower}: {out / f'{tower}.plan'}" in printed
        assert (out / f"{tower}.plan").read_bytes().startswith(b"fake plan")
    assert json.loads((out / "engine.json").read_text())["status"] == "built"
    assert sorted(p.name for p in dense_dir.iterdir()) == before
