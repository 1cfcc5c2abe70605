"""Runners: every backend that can run here matches PyTorch; the others say why they cannot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import CAPTIONS, make_build

from mfdeploy import platform
from mfdeploy.errors import UserError
from mfdeploy.runtime import BACKENDS, BackendUnavailable, BuildDir, OrtRunner, TrtRunner, make_runner, probe_backends
from mfdeploy.runtime import trt_runner as trt_runner_mod
from mfdeploy.runtime.gate import threshold
from mfdeploy.runtime.inputs import pixel_values, text_inputs
from mfdeploy.runtime.trt_runner import engine_command


@pytest.fixture(scope="module")
def build_dir(tiny_clip_dir, tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("serve") / "build", tiny_clip_dir)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("variant", ["pruned", "dense"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_matches_torch(build_dir, backend, variant):
    with BuildDir(build_dir) as build:
        try:
            runner = make_runner(backend, build, variant=variant)
        except BackendUnavailable as e:
            pytest.skip(f"{backend} unavailable here: {e}")
        reference = make_runner("torch", build, variant=variant)
        adapter = build.adapter(variant)
        images = pixel_values(3, adapter.image_size, seed=1)
        ids, mask = (t.numpy() for t in adapter.tokenize(CAPTIONS))  # padded rows: the mask matters
        # OpenVINO runs in the CPU's native precision (bf16 where it has it): its own gate's bound
        floor = threshold(runner.precision, variant) if backend == "openvino" else 0.9999
        try:
            for got, want in ((runner.embed_images(images), reference.embed_images(images)),
                              (runner.embed_texts(ids, mask), reference.embed_texts(ids, mask))):
                assert got.shape == want.shape and got.dtype == np.float32
                assert _cos(got, want).min() >= floor
                np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-4)
        finally:
            runner.close()
            reference.close()


def test_pruned_differs_from_dense(build_dir):
    """The fake build really is pruned: otherwise the dense/pruned comparisons prove nothing."""
    with BuildDir(build_dir) as build:
        a = make_runner("ort-cpu", build, variant="pruned").embed_images(pixel_values(2, 32))
        b = make_runner("ort-cpu", build, variant="dense").embed_images(pixel_values(2, 32))
    assert _cos(a, b).min() < 0.999


def test_unavailable_backends_say_why(build_dir):
    import onnxruntime as ort

    reasons = probe_backends(build_dir)
    assert set(reasons) == set(BACKENDS)
    assert reasons["torch"] is None and reasons["ort-cpu"] is None
    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    if not gpu:
        for name in ("ort-cuda", "ort-trt"):
            assert "onnxruntime-gpu is not installed" in reasons[name], reasons[name]
    try:
        trt_runner_mod.check_tensorrt()
    except BackendUnavailable as e:
        assert reasons["trt"] == str(e) and reasons["trt"]
    else:  # TensorRT and a GPU, but the fake build has no engines
        assert "with `mfdeploy engine " in reasons["trt"]


def test_trt_without_engines_says_how_to_build_them(build_dir, monkeypatch):
    monkeypatch.setattr(trt_runner_mod, "check_tensorrt", lambda: None)
    with pytest.raises(BackendUnavailable, match=r"no engines in .*engines .*with `mfdeploy engine ONNX_DIR`"):
        TrtRunner(build_dir / "engines")
    # through the registry: the exact command for each variant, with the build's precision
    fp16, _ = BuildDir(build_dir).tensorrt_flags()
    flag = " --fp16" if fp16 else ""
    for variant, onnx, engines, extra in (("pruned", "onnx", "engines", ""),
                                          ("dense", "onnx_dense", "engines_dense", " --sparse off")):
        with pytest.raises(BackendUnavailable) as err:
            make_runner("trt", build_dir, variant=variant)
        assert str(err.value).endswith(f"`mfdeploy engine {build_dir / onnx} --out {build_dir / engines}{flag}{extra}`")
    # a real build records its engine profiles (also when it skipped the engines): the command repeats them
    build = BuildDir(build_dir)
    vision = {"pixel_values": {"min": [1, 3, 32, 32], "opt": [16, 3, 32, 32], "max": [16, 3, 32, 32]}}
    text = {n: {"min": [1, 1], "opt": [16, 40], "max": [16, 40]} for n in ("input_ids", "attention_mask")}
    build.manifest = {**build.manifest, "pattern": "2:4",
                      "engine": {"fp16": True, "profiles": {"vision": vision, "text": text}}}
    assert engine_command(build, "dense") == (f"mfdeploy engine {build_dir / 'onnx_dense'} --out "
                                              f"{build_dir / 'engines_dense'} --fp16 --max-batch 16 --max-text-len 40 "
                                              "--sparse off")


def test_empty_tensorrt_namespace_is_not_tensorrt(monkeypatch):
    """An empty `tensorrt` namespace directory imports fine: it must still count as not installed."""
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        trt_runner_mod.check_tensorrt()


def test_silent_cpu_fallback_is_reported(build_dir, monkeypatch):
    """ORT replaces a provider it cannot start with the CPU: that must not be measured as ort-cuda."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present: no fallback to provoke")
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*real(), "CUDAExecutionProvider"])
    monkeypatch.setattr(platform, "cuda_device_count", lambda: (1, ""))
    with pytest.raises(BackendUnavailable, match="fell back to CPUExecutionProvider"):
        OrtRunner(build_dir / "onnx", provider="cuda")


def test_tensorrt_ep_options(build_dir, tmp_path):
    runner = OrtRunner.__new__(OrtRunner)  # options only: no session (no GPU here)
    runner.provider, runner.onnx_dir = "tensorrt", build_dir / "onnx"
    profile = runner._profile("text", max_batch=8, max_text_len=16)
    assert profile == {"trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1",
                       "trt_profile_opt_shapes": "input_ids:8x16,attention_mask:8x16",
                       "trt_profile_max_shapes": "input_ids:8x16,attention_mask:8x16"}
    assert runner._profile("vision", 4, None)["trt_profile_max_shapes"] == "pixel_values:4x3x32x32"
    providers = runner._providers(tmp_path / "cache", fp16=True, sparse=True, profile=profile)
    name, opts = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[-1] == "CPUExecutionProvider"
    assert opts["trt_fp16_enable"] == "1" and opts["trt_sparsity_enable"] == "1"
    assert opts["trt_engine_cache_enable"] == "1" and opts["trt_timing_cache_enable"] == "1"
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path / "cache")


def test_make_runner_rejects_unknown_names(build_dir):
    known = "torch, torch-cuda, torch-cuda-sparse, ort-cpu, ort-cuda, ort-trt, trt"
    with pytest.raises(UserError, match=f"known backends: {known}"):
        make_runner("tflite", build_dir)
    with pytest.raises(UserError, match="unknown variant"):
        make_runner("torch", build_dir, variant="sparse")


def test_missing_onnx_file_is_a_user_error(build_dir, tmp_path):
    (tmp_path / "vision.onnx").write_bytes((build_dir / "onnx" / "vision.onnx").read_bytes())
    with pytest.raises(UserError, match="text.onnx: missing"):
        OrtRunner(tmp_path)
    runner = OrtRunner(tmp_path, towers=("vision",), threads=1)
    assert runner.embed_images(pixel_values(1, 32)).shape == (1, 16)


def test_text_inputs_end_in_eos(tiny_adapter):
    tok = tiny_adapter.tokenizer
    ids, mask = text_inputs(4, 16, tokenizer=tok)
    assert ids.shape == mask.shape == (4, 16) and ids.dtype == np.int64 and mask.all()
    assert (ids[:, 0] == tok.bos_token_id).all() and (ids[:, -1] == tok.eos_token_id).all()
    assert not np.isin(ids[:, 1:-1], [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]).any()
    ids, _ = text_inputs(2, 77, bos_token_id=49406, eos_token_id=49407)
    assert ids[0, -1] == 49407 and ids[:, :-1].max() < 49407 and ids.shape == (2, 77)
    assert text_inputs(1, 1, tokenizer=tok)[0].tolist() == [[tok.eos_token_id]]


def test_importing_serve_is_light():
    code = ("import sys, mfdeploy.runtime; heavy = {'torch', 'onnxruntime', 'tensorrt', 'matplotlib'} & "
            "set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("manifest, flags", [
    ({"model": "m", "pattern": "2:4"}, (True, True)),
    ({"model": "m", "pattern": None}, (False, False)),
    ({"model": "m", "pattern": "2:4", "engine": {"fp16": False, "sparse_weights": {"vision": False, "text": False}}},
     (False, False)),
    ({"model": "m", "engine": {"fp16": True, "sparse_weights": {"vision": True, "text": False}}}, (True, True)),
])
def test_tensorrt_flags_follow_the_build(tmp_path, manifest, flags):
    (tmp_path / "build.json").write_text(json.dumps(manifest))
    assert BuildDir(tmp_path, require_onnx=False).tensorrt_flags() == flags
