"""Pruning and serving with torch on CUDA (issue 18); skipped without a CUDA GPU.

The tiny test model's linears (32 wide) are below what the sparse kernels take, so the semi-structured test
uses a layer of ViT-B/32's shape; the masks test uses the bundled model.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs torch with a CUDA GPU", allow_module_level=True)


def test_cuda_masks_agree_with_cpu_masks():
    from mfdeploy.models import load
    from mfdeploy.pruning import PruneConfig, prune_model

    masks = {}
    for device in ("cpu", "cuda"):
        adapter = load(None)
        adapter.model.to(device)
        cfg = PruneConfig(ratio=0.5, calib="shapes", calib_samples=64, show_progress=False, device=device)
        masks[device] = {k: v.cpu() for k, v in prune_model(adapter, cfg)["_masks"].items()}
    same = sum(int((masks["cpu"][n] == masks["cuda"][n]).sum()) for n in masks["cpu"])
    assert same / sum(m.numel() for m in masks["cpu"].values()) >= 0.999


def test_semi_structured_linear_matches_dense_fp16():
    from torch import nn

    from mfdeploy.pruning.patterns import mask_nm
    from mfdeploy.runtime.torch_cuda import is_2to4, sparsify_linears

    torch.manual_seed(0)
    layer = nn.Linear(768, 3072).cuda().half()
    with torch.no_grad():
        layer.weight.mul_(mask_nm(layer.weight.float().abs(), 2, 4).to(layer.weight.dtype))
    assert is_2to4(layer.weight)
    x = torch.randn(64, 768, device="cuda", dtype=torch.float16)
    want = layer(x).float()
    model = nn.Sequential(layer)
    sparse, refused = sparsify_linears(model)
    assert sparse == ["0"] and not refused
    got = model(x).float()
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert float(cos.min()) >= 0.999


def test_bench_times_torch_cuda_with_cuda_events(tiny_clip_dir, tmp_path):
    """`mfdeploy bench` rows for both torch-cuda backends: measured on cuda:0, pruned and dense, by CUDA events."""
    import time

    from helpers import make_build

    from mfdeploy.bench import run_bench
    from mfdeploy.runtime import BuildDir, make_runner

    build_dir = make_build(tmp_path / "b", tiny_clip_dir, onnx_dense=False)
    rows = run_bench(build_dir, backends=["torch-cuda", "torch-cuda-sparse"], towers=["vision", "text"],
                     batch_sizes=[1, 4], warmup=1, iters=3, min_time=0.0, write=False)
    measured = [r for r in rows if "throughput" in r]
    assert len(measured) == 2 * 2 * 2 * 2  # backends x towers x batches x (pruned, dense)
    assert all(r["device"].startswith("cuda") and r["timing"] == "CUDA events" for r in measured)
    with BuildDir(build_dir) as build:
        runner = make_runner("torch-cuda", build)
        images = torch.zeros(2, 3, 32, 32).numpy()
        runner.embed_images(images)
        t0 = time.perf_counter()
        gpu = runner.time_call(lambda: (runner.embed_images(images), time.sleep(0.01)))
        wall = time.perf_counter() - t0
        assert 0 < gpu <= wall + 1e-3 and gpu >= 0.01  # the events bracket the call, its host wait included
