"""`--dtype float8` of the torch-cuda runner (`mfdeploy.runtime.fp8`): FP8 linears through torch._scaled_mm, which
torch also runs on the CPU, so the arithmetic is checked here on the bundled model; the GPU refusal with a faked
device capability."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mfdeploy
from mfdeploy.data import world
from mfdeploy.errors import UserError
from mfdeploy.runtime import fp8 as fp8_mod
from mfdeploy.runtime.base import BackendUnavailable
from mfdeploy.runtime.fp8 import Fp8Linear, fp8_unsupported, to_fp8
from mfdeploy.server import ServeConfig


def _cpu_rowwise_scaled_mm() -> bool:
    """Whether this torch's CPU `_scaled_mm` takes per-row scales, as `Fp8Linear` gives it (torch 2.11's takes
    per-tensor ones only; the CUDA kernel, which serving uses, takes both)."""
    a = Fp8Linear(nn.Linear(16, 16))
    try:
        a(torch.ones(16, 16, dtype=torch.bfloat16))
    except RuntimeError:
        return False
    return True


ROWWISE = pytest.mark.skipif(not _cpu_rowwise_scaled_mm(),
                             reason="this torch's CPU _scaled_mm takes per-tensor scales only (2.11; the GPU's "
                                    "takes per-row ones): the FP8 arithmetic cannot be checked on this CPU")


def _min_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min())


@ROWWISE
def test_fp8_towers_of_the_bundled_model_stay_within_the_gate():
    """Every linear in FP8 (per-channel weight, per-row input scales), the rest in bf16: min cosine against
    fp32 >= 0.99 (the gate's FP8 bar) on 32 held-out scenes and their captions; measured 0.998 here."""
    adapter = mfdeploy.load()
    scenes = [world.make_scene(s) for s in world.split_seeds("eval", 32)]
    pixels = adapter.pixel_values([s.render() for s in scenes])
    ids, mask = adapter.tokenize([s.caption() for s in scenes])
    low = copy.copy(adapter)
    low.model = copy.deepcopy(adapter.model).to(torch.bfloat16)
    converted, kept = to_fp8(low.model)
    assert len(converted) == sum(isinstance(m, nn.Linear) for m in adapter.model.modules()) and not kept
    with torch.inference_mode():
        vision = _min_cos(low.vision_tower()(pixels.to(torch.bfloat16)), adapter.vision_tower()(pixels))
        text = _min_cos(low.text_tower()(ids, mask), adapter.text_tower()(ids, mask))
    assert 0.99 <= vision < 1 and 0.99 <= text < 1, (vision, text)


@ROWWISE
def test_fp8_linear_matches_its_float_linear_and_keeps_unaligned_ones():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(3, 5, 64)
    got = Fp8Linear(linear)(x)
    assert got.shape == (3, 5, 32) and got.dtype == x.dtype
    assert _min_cos(got.reshape(-1, 32), linear(x).detach().reshape(-1, 32)) > 0.99
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 10))
    converted, kept = to_fp8(model)
    assert converted == ["0"] and kept == {"1": "10x32: not multiples of 16"} and isinstance(model[1], nn.Linear)


def test_fp8_sparse_linear_scales_and_pads_as_cusparselt_needs(monkeypatch):
    """`Fp8SparseLinear` against a stand-in for cuSPARSELt (CPU torch has none) that checks what the real ops
    take: a 2:4 FP8 weight to compress; an FP8 dense operand [in, rows padded to 16]; a float32 alpha vector,
    one factor per output row (per-channel weight scale x the call's input scale); bf16 out, transposed."""
    from mfdeploy.pruning.patterns import mask_nm
    from mfdeploy.runtime.fp8 import FP8, Fp8SparseLinear

    def compress(weight):
        assert weight.dtype == FP8
        assert ((weight.float() == 0).reshape(weight.shape[0], -1, 4).sum(-1) >= 2).all()  # still 2:4
        return weight.clone()

    def sparse_mm(packed, dense, alpha=None, out_dtype=None, transpose_result=False):
        assert dense.dtype == FP8 and dense.shape[0] == packed.shape[1] and dense.shape[1] % 16 == 0
        assert alpha.dtype == torch.float32 and alpha.shape == (packed.shape[0],)
        assert out_dtype == torch.bfloat16 and transpose_result
        return ((packed.float() @ dense.float()) * alpha[:, None]).t().to(out_dtype)

    monkeypatch.setattr(torch, "_cslt_compress", compress)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", sparse_mm)
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight.mul_(mask_nm(linear.weight.abs(), 2, 4))
    x = torch.randn(3, 5, 64)  # 15 rows: padded to 16 for the kernel, cut back after
    got = Fp8SparseLinear(linear)(x)
    assert got.shape == (3, 5, 32) and got.dtype == x.dtype
    assert _min_cos(got.reshape(-1, 32), linear(x).detach().reshape(-1, 32)) > 0.99


def _fake_cusparselt(monkeypatch, refuse: bool = False) -> None:
    """torch's cuSPARSELt ops replaced by dense arithmetic on the CPU (`refuse`: compressing fails, as the
    kernels do for a shape or GPU they do not take)."""
    def compress(weight):
        if refuse:
            raise RuntimeError("cuSPARSELt: unsupported shape\nmore")
        return weight.clone()

    monkeypatch.setattr(torch, "_cslt_compress", compress)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", lambda packed, dense, alpha=None, out_dtype=None,
                        transpose_result=False: ((packed.float() @ dense.float()) * alpha[:, None]).t().to(out_dtype))


@ROWWISE
def test_fp8_with_2to4_kernels_picks_per_layer_and_says_why(monkeypatch):
    """`--dtype float8` on torch-cuda-sparse: a 2:4 linear becomes `Fp8SparseLinear` where the choice keeps it
    sparse; one it declines, one the kernels refuse and one that is not 2:4 stay `Fp8Linear`, each listed."""
    from types import SimpleNamespace

    from mfdeploy.pruning.patterns import mask_nm
    from mfdeploy.runtime.fp8 import Fp8SparseLinear
    from mfdeploy.runtime.torch_cuda import TorchCudaRunner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 64), nn.Linear(64, 32))
    with torch.no_grad():
        for i in (0, 1):
            model[i].weight.mul_(mask_nm(model[i].weight.abs(), 2, 4))
    x = torch.randn(5, 64)
    want = model(x).detach()
    _fake_cusparselt(monkeypatch)
    asked = []

    def keep(name, dense, sparse):
        asked.append((name, type(dense).__name__, type(sparse).__name__))
        return name == "0"

    runner = SimpleNamespace(sparse_layers=[], dense_layers={})
    converted, kept = to_fp8(model, TorchCudaRunner._fp8_maker(runner, keep))  # type: ignore[arg-type]
    assert converted == ["0", "1", "2"] and kept == {}
    assert asked == [("0", "Fp8Linear", "Fp8SparseLinear"), ("1", "Fp8Linear", "Fp8SparseLinear")]
    assert runner.sparse_layers == ["0"] and runner.dense_layers == {"1": "dense is faster at the serving token counts"}
    assert isinstance(model[0], Fp8SparseLinear) and isinstance(model[1], Fp8Linear) and isinstance(model[2], Fp8Linear)
    assert _min_cos(model(x), want) > 0.99

    _fake_cusparselt(monkeypatch, refuse=True)
    other = nn.Sequential(nn.Linear(64, 32))
    with torch.no_grad():
        other[0].weight.mul_(mask_nm(other[0].weight.abs(), 2, 4))
    runner = SimpleNamespace(sparse_layers=[], dense_layers={})
    to_fp8(other, TorchCudaRunner._fp8_maker(runner, None))  # type: ignore[arg-type]
    assert runner.dense_layers == {"0": "cuSPARSELt: unsupported shape"} and isinstance(other[0], Fp8Linear)


def test_fp8_is_refused_on_gpus_without_fp8_tensor_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    assert fp8_unsupported(torch.device("cuda")) == (
        "--dtype float8: NVIDIA A100 (compute capability 8.0) has no FP8 tensor cores (8.9 and newer: Ada, "
        "Hopper, Blackwell); use --dtype float16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8_unsupported(torch.device("cuda")) is None and fp8_unsupported(torch.device("cpu")) is None
    assert fp8_mod.MIN_CAPABILITY == (8, 9)


def test_dtype_choices_per_torch_backend(tmp_path):
    assert ServeConfig(build_dir=tmp_path, backend="torch-cuda", dtype="float8").validate().runner_options() == \
        {"dtype": "float8"}
    assert ServeConfig(build_dir=tmp_path, backend="torch-cuda-sparse", dtype="float8").validate(
        ).runner_options() == {"dtype": "float8"}  # 2:4 linears on cuSPARSELt's FP8 kernels where they win
    with pytest.raises(UserError, match=r"^--dtype bfloat16: choose one of float16, float8$"):
        ServeConfig(build_dir=tmp_path, backend="torch-cuda", dtype="bfloat16").validate()
    from mfdeploy.runtime.torch_runner import check_backend_dtype

    assert check_backend_dtype("float8", ["torch", "torch-cuda", "ort-cpu"]) == ["torch-cuda"]
    with pytest.raises(UserError, match=r"^--dtype int4: choose one of float32, bfloat16 \(torch\); float16, float8 "
                                        r"\(torch-cuda\)$"):
        check_backend_dtype("int4", ["torch", "torch-cuda"])


def test_fp8_runner_without_cuda_says_so_before_loading():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from mfdeploy.runtime.registry import BACKENDS

    no_build = object()  # the checks come before the build is read
    with pytest.raises(BackendUnavailable, match="CUDA"):
        BACKENDS["torch-cuda"](no_build, "pruned", {"dtype": "float8"})  # type: ignore[arg-type]
    with pytest.raises(UserError, match="--dtype float32: choose one of float16, float8"):
        BACKENDS["torch-cuda"](no_build, "pruned", {"dtype": "float32"})  # type: ignore[arg-type]
