"""`--device` and `--dtype` (issue 18): CUDA asked for where there is none fails in one line before any work;
half precision prunes with float32 statistics; the checkpoint is written in float32 whatever ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mfdeploy.cli import main
from mfdeploy.errors import UserError
from mfdeploy.models.device import resolve_device, resolve_dtype
from mfdeploy.pruning.masks import load_masks

GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None) is torch.float32 and resolve_dtype("bfloat16") is torch.bfloat16
    for bad, message in (("gpu", "expected auto, cpu, cuda or cuda:N"), ("cuda:x", "expected auto")):
        with pytest.raises(UserError, match=message):
            resolve_device(bad)
    with pytest.raises(UserError, match="choose one of float32, float16, bfloat16"):
        resolve_dtype("int8")


@no_cuda
@pytest.mark.parametrize("verb", ["prune", "build", "eval"])
def test_cuda_where_there_is_none_is_one_line(tiny_clip_dir, tmp_path, capsys, verb):
    argv = {"prune": ["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--out", str(tmp_path / "o")],
            "build": ["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--out", str(tmp_path / "o")],
            "eval": ["eval", str(tiny_clip_dir)]}[verb]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--device", "cuda"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--device cuda: no CUDA device here" in err and "use --device cpu" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_bfloat16_prunes_with_float32_statistics(tiny_clip_dir, tmp_path):
    common = ["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "wanda", "--calib", "shapes",
              "--calib-samples", "16", "--batch-size", "8", "--device", "cpu"]
    main([*common, "--out", str(tmp_path / "f32")])
    main([*common, "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")])
    rec = json.loads((tmp_path / "bf16" / "prune.json").read_text())
    assert (rec["device"], rec["dtype"]) == ("cpu", "bfloat16")
    assert abs(rec["sparsity"]["overall"] - 0.5) < 1e-3
    (m32, _), (m16, _) = (load_masks(tmp_path / d / "masks.safetensors") for d in ("f32", "bf16"))
    agree = sum(int((m32[n] == m16[n]).sum()) for n in m32) / sum(m.numel() for m in m32.values())
    assert agree >= 0.95, agree  # bfloat16 weights round scores a little: ties and near-ties may flip
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bf16" / "pruned" / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}  # written in float32 from the CPU


def test_distillation_refuses_half_precision(tiny_clip_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--calib", "shapes", "--dtype", "float16",
              "--distill-steps", "3", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--distill-steps trains in float32" in capsys.readouterr().err


def test_torch_cuda_backends_say_why_they_cannot_run(tiny_clip_dir, tmp_path):
    """Without CUDA both torch-cuda backends are unavailable with the reason; 2:4 detection is exact."""
    from helpers import make_build

    from mfdeploy.runtime import probe_backends
    from mfdeploy.runtime.torch_cuda import cuda_unavailable, is_2to4

    reason = cuda_unavailable()
    probed = probe_backends(make_build(tmp_path / "b", tiny_clip_dir, onnx_dense=False),
                            ["torch-cuda", "torch-cuda-sparse"])
    if reason is None:
        assert probed == {"torch-cuda": None, "torch-cuda-sparse": None}
    else:
        assert probed == {"torch-cuda": reason, "torch-cuda-sparse": reason} and "CUDA" in reason
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0]])
    assert is_2to4(w) and not is_2to4(w + 1) and not is_2to4(w[:, :6])


def test_sparsify_linears_lists_the_layers_its_kernels_refuse():
    """A 2:4 linear whose kernels cannot run stays dense and is listed with the reason; a dense one is left alone."""
    from torch import nn

    from mfdeploy.pruning.patterns import mask_nm
    from mfdeploy.runtime.torch_cuda import sparsify_linears

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 16))
    with torch.no_grad():
        model[0].weight.mul_(mask_nm(model[0].weight.abs(), 2, 4))
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="unknown sparse kernels 'cuda'"):
        sparsify_linears(model, "cuda")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/gpu covers the sparse path")
    sparse, refused = sparsify_linears(model, "cutlass")
    assert sparse == [] and list(refused) == ["0"] and "CUDA" in refused["0"]  # layer 1 is not 2:4: not tried
    assert type(model[0].weight) is nn.Parameter and torch.equal(model[0].weight, before)


@no_cuda
def test_gpu_check_refuses_without_cuda_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(GPU_CHECK), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_reports_a_failed_step_and_goes_on(monkeypatch):
    monkeypatch.syspath_prepend(str(GPU_CHECK.parent))
    import gpu_check

    result = {"machine": {"gpu": None, "driver": None, "torch": "t", "cuda": None}}

    def broken():
        raise RuntimeError("kernels refused\nsecond line")

    gpu_check.guarded(result, "vitb32", broken)
    gpu_check.guarded(result, "backends", lambda: {"torch-cuda": "no CUDA"})
    assert result["errors"] == {"vitb32": "RuntimeError: kernels refused"}
    assert result["backends"] == {"torch-cuda": "no CUDA"}
    md = gpu_check.markdown(result)
    assert "**step vitb32 failed**: RuntimeError: kernels refused" in md and "| torch-cuda | skipped: no CUDA |" in md


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_writes_its_report(tmp_path):
    """The script's whole flow on the CPU (tiny ViT, no sparse kernels): the JSON and markdown it writes."""
    # a budget no CPU run reaches: on a loaded machine the default 360 s skipped the last steps (the test checks them)
    proc = subprocess.run([sys.executable, str(GPU_CHECK), "--cpu-dry-run", "--budget-s", "3000",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check_dry_run.json").read_text())
    assert "errors" not in result and result["bundled"]["masks_agreement"] == 1.0
    rows = result["vitb32"]["towers"]
    assert {(r["model"], r["tower"]) for r in rows} == {(m, t) for m in ("dense", "MoPE 0.5")
                                                        for t in ("vision", "text")}
    assert all(r["min_cosine_vs_fp32"] > 0.999 and r["items_per_s"] > 0 for r in rows)
    assert set(result["backends"]) == {"ort-cuda", "ort-trt", "trt", "torch-cuda", "torch-cuda-sparse"}
    assert {r["backend"] for r in result["bench"]} == {"torch", "torch-cuda", "torch-cuda-sparse"}
    md = (tmp_path / "gpu_check_dry_run.md").read_text()
    assert "| dense | vision | 1 |" in md
    # the runner as serve makes it, for both model sizes, and the server under load (the CPU backend here)
    assert {(r["model"], r["runner"]) for r in result["runners"] + result["runners_l14"]} == {
        (m, v) for m in ("ViT-B/32", "ViT-L/14") for v in ("eager", "compile")}
    assert all(r["min_cosine_vs_eager"] > 0.9999 for r in result["runners"] + result["runners_l14"])
    serve = result["serve"]
    assert serve["backend"] == "torch" and serve["failed"] == 0
    assert any(b.startswith("ViT-B/32 image, torch: batching / --max-batch 1 at 16 clients") for b in serve["bars"])
    assert "| ViT-L/14 | compile | text | 4 |" in md and "`mfdeploy serve` under load" in md


def test_gpu_check_starts_nothing_once_its_budget_is_spent(monkeypatch, tmp_path):
    """A step or runner variant that would start after --budget-s is a row or line saying so, not a run."""
    monkeypatch.syspath_prepend(str(GPU_CHECK.parent))
    import gpu_check

    monkeypatch.setitem(gpu_check.BUDGET, "s", 0.0)
    rows = gpu_check.step_runners("cpu", 1, True, "l14")
    assert [r["runner"] for r in rows] == ["eager", "compile"]
    assert all(r["model"] == "ViT-L/14" and r["error"].startswith("skipped: the check's 0 s budget") for r in rows)
    md = gpu_check.markdown({"machine": {"gpu": None, "driver": None, "torch": "t", "cuda": None},
                             "skipped": {"serve": "the check's 0 s budget was spent"}, "runners_l14": rows})
    assert "- step serve not run: the check's 0 s budget was spent" in md
    assert "| ViT-L/14 | compile | skipped: the check's 0 s budget" in md


def test_half_precision_embeddings_come_back_unit_norm_in_float32():
    """torch-cuda's fp16 towers normalise in fp16 (norms off by ~4e-4 on an H200): the runner renormalises."""
    from mfdeploy.runtime.torch_runner import _unit_float32

    torch.manual_seed(0)
    off = (torch.nn.functional.normalize(torch.randn(3, 512), dim=-1) * 1.0004).half()
    out = _unit_float32(off)
    assert out.dtype == torch.float32 and torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert (off.float().norm(dim=-1) - 1).abs().min() > 2e-4  # the fp16 input really was off
    exact = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    assert _unit_float32(exact) is exact  # float32 output is passed through untouched
