"""Real TensorRT builds of the tiny model (skipped without TensorRT and a CUDA GPU)."""

from __future__ import annotations

import pytest
import torch

from mfdeploy.exporting import build_engines, check_parity, export_towers
from mfdeploy.platform import cuda_device_count

pytestmark = pytest.mark.gpu

trt = pytest.importorskip("tensorrt")
if not hasattr(trt, "Builder"):  # type stubs alone leave an empty `tensorrt` namespace package
    pytest.skip("TensorRT is not installed (empty tensorrt package)", allow_module_level=True)
_count, _why = cuda_device_count()
if _count == 0:
    pytest.skip(f"no CUDA GPU: {_why}", allow_module_level=True)


def _sparsify_2to4(adapter) -> None:
    with torch.no_grad():
        for layer in adapter.prunable_layers().values():
            w = layer.module.weight  # [out, in]
            groups = w.abs().reshape(w.shape[0], -1, 4)
            keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, groups.argsort(dim=-1)[..., :2], False)
            w.mul_(keep.reshape_as(w))


@pytest.fixture(scope="module", params=["dense", "2:4"])
def onnx_dir(request, tmp_path_factory, tiny_clip_dir):
    from mfdeploy.models import load

    adapter = load(tiny_clip_dir)
    if request.param == "2:4":
        _sparsify_2to4(adapter)
    out = tmp_path_factory.mktemp("gpu_onnx")
    export_towers(adapter, out)
    check_parity(adapter, out, n=8, save_inputs=True)
    return request.param, out


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_build_engines_on_gpu(onnx_dir, fp16, tmp_path):
    kind, path = onnx_dir
    record = build_engines(path, fp16=fp16, sparse="auto", max_batch=8, out_dir=tmp_path)
    assert record["status"] == "built", record
    assert record["sparse_weights"] == {"vision": kind == "2:4", "text": kind == "2:4"}
    for tower in ("vision", "text"):
        built = record["engines"][tower]
        assert (tmp_path / built["engine"]).stat().st_size > 0
        assert built["parity"]["passed"], built["parity"]
        assert (tmp_path / built["log"]).read_text().strip()
        if kind == "2:4":
            # with SPARSE_WEIGHTS set TensorRT reports its sparse layers, even when none qualify
            assert built["sparsity"]["reported"], f"no sparsity report in {tmp_path / built['log']}"
    assert record["engines"]["text"]["io"]["input_ids"]["profile"][2] == [8, 48]
    assert (tmp_path / "timing.cache").stat().st_size > 0


def test_build_then_bench_times_trt_dense_and_pruned(tiny_clip_dir, tmp_path):
    """`mfdeploy build` on a GPU makes engines/ and engines_dense/; `bench` then times trt for both variants."""
    import json

    from mfdeploy.bench import run_bench
    from mfdeploy.cli import main

    out = tmp_path / "build"
    main(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude", "--pattern", "2:4",
          "--fp16", "--max-batch", "4", "--out", str(out)])
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["engine"]["status"] == "built" and manifest["engine_dense"]["status"] == "built"
    rows = run_bench(out, backends=["trt"], towers=["vision", "text"], batch_sizes=[1, 4], warmup=1, iters=3,
                     min_time=0.0, write=False)
    measured = {(r["tower"], r["variant"], r["batch"]) for r in rows if "throughput" in r}
    assert measured == {(t, v, b) for t in ("vision", "text") for v in ("pruned", "dense") for b in (1, 4)}
