"""FP8 linears for the `torch-cuda` runner (`--dtype float8`): weights and activations in float8_e4m3fn.

Each `nn.Linear` becomes an `Fp8Linear`: its weight is stored in FP8 with one
scale per output channel, and each call quantizes its input to FP8 with one
scale per row (dynamic: the row's largest magnitude maps to FP8's largest,
448), then multiplies through `torch._scaled_mm`, which applies both scales
and returns bfloat16 (torch's row-wise scaled matmul returns bf16 only on
CUDA). Everything else, LayerNorm, softmax, GELU, the residual stream, stays
in bfloat16. FP8 tensor cores are on compute capability 8.9 (Ada) and 9.0
(Hopper) and newer; elsewhere the runner is refused in one line.

`Fp8SparseLinear` is the same linear with a 2:4 weight on cuSPARSELt's
FP8 kernels (Hopper): cuSPARSELt takes no operand scales, only one factor per
output row (its "alpha vector"), so the weight keeps its per-channel scale
and the input gets one scale for the whole call (per tensor), folded into
that vector on the GPU (a single alpha would be read back to the host on
every call, which a CUDA graph cannot capture). It is what
`benchmarks/gpu_check.py` times against the dense FP8 and fp16 linears, and
what `torch-cuda-sparse --dtype float8` uses for a 2:4 linear where it times
faster than `Fp8Linear` (`TorchCudaRunner`).

A linear whose dimensions are not multiples of 16 (what the FP8 kernels
take) stays in bfloat16 and is listed with the reason. The same module runs
on the CPU, where torch implements the scaled matmul too: the tests check
the bundled model's FP8 embeddings against fp32 there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MIN_CAPABILITY = (8, 9)
ALIGN = 16  # the FP8 kernels' dimension multiple
SPARSE_ROWS = 16  # cuSPARSELt's FP8 kernels take the dense operand in multiples of this many rows (padded)


def fp8_unsupported(device: torch.device) -> str | None:
    """Why `device` cannot run FP8 matmuls on tensor cores, or None when it can."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        return (f"--dtype float8: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no "
                "FP8 tensor cores (8.9 and newer: Ada, Hopper, Blackwell); use --dtype float16")
    return None


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` [rows, k] in FP8 with one float32 scale per row ([rows, 1]): x ~ q * scale."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Module):
    """A linear in FP8: weight per output channel, input per row, both scales applied by `torch._scaled_mm`."""

    weight_fp8: torch.Tensor  # [out, in] float8_e4m3fn
    weight_scale: torch.Tensor  # [1, out] float32

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _rowwise(linear.weight.detach())  # [out, in], [out, 1]
        self.register_buffer("weight_fp8", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]: the column scales of weight.T
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [N, in]
        q, scale = _rowwise(rows)
        out = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                               out_dtype=torch.bfloat16)  # [N, out]; weight_fp8.t() is column-major, as required
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class Fp8SparseLinear(nn.Module):
    """A 2:4 linear in FP8 on cuSPARSELt: weight per output channel, input per tensor (module doc).

    The weight must already be 2:4 (two zeros in every group of four along its input dimension): FP8 keeps
    zeros zero, so the pattern survives quantization, and `torch._cslt_compress` packs it.
    """

    packed: torch.Tensor  # cuSPARSELt's compressed weight (kept values and metadata)
    weight_scale: torch.Tensor  # [out] float32

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _rowwise(linear.weight.detach())  # [out, in], [out, 1]
        self.register_buffer("packed", torch._cslt_compress(weight))
        self.register_buffer("weight_scale", scale.reshape(-1).contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [N, in]
        n = rows.shape[0]
        pad = (-n) % SPARSE_ROWS
        if pad:
            rows = torch.nn.functional.pad(rows, (0, 0, 0, pad))
        scale = rows.abs().amax().float().clamp(min=1e-12) / FP8_MAX  # one scale for the call, on the GPU
        q = (rows.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        out = torch._cslt_sparse_mm(self.packed, q.t(), alpha=self.weight_scale * scale, out_dtype=torch.bfloat16,
                                    transpose_result=True)[:n]  # [N, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def to_fp8(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module] | None = None,
           ) -> tuple[list[str], dict[str, str]]:
    """Swap every `nn.Linear` of `model` for an `Fp8Linear` (or what `make(name, linear)` returns), in place.

    Returns:
        (names converted, {name: why it stayed in its float dtype}).
    """
    make = make or (lambda _name, linear: Fp8Linear(linear))
    converted, kept = [], {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            full = f"{name}.{child_name}" if name else child_name
            if child.in_features % ALIGN or child.out_features % ALIGN:
                kept[full] = f"{child.out_features}x{child.in_features}: not multiples of {ALIGN}"
                continue
            setattr(module, child_name, make(full, child))
            converted.append(full)
    return converted, kept


__all__ = ["FP8", "Fp8Linear", "Fp8SparseLinear", "fp8_unsupported", "to_fp8"]
