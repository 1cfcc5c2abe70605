"""GPU runners (ORT CUDA and TensorRT EPs, native TensorRT engines) against PyTorch; skipped without a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared fake-build helper in tests/
from helpers import CAPTIONS, make_build  # noqa: E402

from mfdeploy.bench import run_bench  # noqa: E402
from mfdeploy.platform import cuda_device_count  # noqa: E402
from mfdeploy.runtime import BackendUnavailable, BuildDir, make_runner  # noqa: E402
from mfdeploy.runtime.inputs import pixel_values  # noqa: E402

pytestmark = pytest.mark.gpu
if cuda_device_count()[0] == 0:
    pytest.skip(f"needs a CUDA device: {cuda_device_count()[1]}", allow_module_level=True)


def _available(backend: str, build: Path) -> None:
    from mfdeploy.runtime import probe_backends

    reason = probe_backends(build, [backend])[backend]
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


@pytest.fixture(scope="module")
def build_dir(tiny_clip_dir, tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("serve_gpu") / "build", tiny_clip_dir)


def _build_engines(onnx_dir: Path, out: Path, max_batch: int = 8, max_len: int = 48) -> None:
    """fp32 engines with one optimisation profile each, built with polygraphy (as `mfdeploy engine` would)."""
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    out.mkdir(parents=True, exist_ok=True)
    shapes = {
        "vision": {"pixel_values": ((1, 3, 32, 32), (max_batch, 3, 32, 32), (max_batch, 3, 32, 32))},
        "text": {n: ((1, 1), (max_batch, 16), (max_batch, max_len)) for n in ("input_ids", "attention_mask")},
    }
    for tower, inputs in shapes.items():
        profile = Profile()
        for name, (lo, opt, hi) in inputs.items():
            profile.add(name, min=lo, opt=opt, max=hi)
        SaveEngine(EngineFromNetwork(NetworkFromOnnxPath(str(onnx_dir / f"{tower}.onnx")),
                                     config=CreateConfig(profiles=[profile])), str(out / f"{tower}.plan"))()


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("backend, min_cos", [("ort-cuda", 0.9999), ("ort-trt", 0.999), ("trt", 0.999)])
def test_gpu_backend_matches_torch(build_dir, backend, min_cos):
    from mfdeploy.runtime.trt_runner import check_tensorrt

    if backend == "trt":
        try:
            check_tensorrt()
        except BackendUnavailable as e:
            pytest.skip(str(e))
        if not (build_dir / "engines" / "vision.plan").is_file():
            _build_engines(build_dir / "onnx", build_dir / "engines")
    _available(backend, build_dir)
    with BuildDir(build_dir) as build:
        runner = make_runner(backend, build, fp16=False, sparse=False)  # TF32 may apply on Ampere+: 0.999
        reference = make_runner("torch", build)
        adapter = build.adapter()
        images = pixel_values(4, adapter.image_size)
        ids, mask = (t.numpy() for t in adapter.tokenize(CAPTIONS))
        try:
            assert runner.device.startswith("cuda")
            assert _cos(runner.embed_images(images), reference.embed_images(images)).min() >= min_cos
            assert _cos(runner.embed_texts(ids, mask), reference.embed_texts(ids, mask)).min() >= min_cos
        finally:
            runner.close()


def test_gpu_bench_rows(build_dir):
    _available("ort-cuda", build_dir)
    rows = run_bench(build_dir, backends=["ort-cuda"], towers=["vision"], batch_sizes=[1, 4], warmup=1, iters=3,
                     min_time=0.0, write=False)
    measured = [r for r in rows if "throughput" in r]
    assert {(r["variant"], r["batch"]) for r in measured} == {(v, b) for v in ("pruned", "dense") for b in (1, 4)}
    assert all(r["device"] == "cuda:0" for r in measured)
