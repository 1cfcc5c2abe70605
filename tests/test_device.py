"""`--device` and `--dtype` (issue 18): CUDA asked for where there is none fails in one line before any work;
half precision prunes with float32 statistics; the checkpoint is written in float32 whatever ran."""

from __future__ import annotations

import json

import pytest
import torch

from mfdeploy.cli import main
from mfdeploy.errors import UserError
from mfdeploy.models.device import resolve_device, resolve_dtype
from mfdeploy.prune.masks import load_masks

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
