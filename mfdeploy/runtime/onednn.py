"""oneDNN's float32 GEMM for plain `nn.Linear` layers on the CPU, where it is measured faster than `linear`.

On some CPUs PyTorch's eager float32 `linear` (MKL's sgemm) runs far below
the machine's peak while oneDNN's GEMM (`torch.ops.mkldnn._linear_pointwise`,
the kernel inductor's frozen graphs call) runs near it: on this project's
2-core AMD EPYC, 170-220 against 370-490 GFLOP/s at ViT-B/32's shapes, and a
whole eager ViT-B/32 tower about 2x faster (benchmarks/torch_linear.py). The
two differ by rounding only (a few float32 ulps of each output).

Two users: the eager `torch` runner runs its towers through `onednn_copy`,
and MoPE's screening (`mfdeploy.pruning.methods.mope_screen`) scores with
`swapped`. Both only on float32 CPU models, and only where `worth_it` (one
measurement per process) says oneDNN is faster here.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

SPEED_NEEDED = 1.3  # oneDNN must run a ViT-B-sized GEMM this much faster than `linear`
_worth: bool | None = None  # `worth_it`'s measurement, once per process


def op() -> Any:
    """oneDNN's linear in this build of PyTorch, or None."""
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`torch.nn.functional.linear(x, weight, bias)` through oneDNN's GEMM."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(nn.Linear):
    """An `nn.Linear` (same parameters, same state dict) whose product runs through oneDNN: a plain linear layer
    becomes one by a class swap, and goes back by another."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def plain_linears(model: nn.Module) -> list[nn.Linear]:
    """The model's plain `nn.Linear` layers (a subclass may compute more than the product, so it keeps its own)."""
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward and "forward" not in m.__dict__]


def best(f: Callable[[], Any], n: int = 5, pick: Callable[[list[float]], float] = min) -> float:
    """Seconds `f` takes: `pick` (min) of `n` timed calls after one untimed."""
    f()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return pick(times)


def worth_it() -> bool:
    """oneDNN's GEMM runs a (256 x 768) @ (768 x 3072) float32 product `SPEED_NEEDED` times faster than `linear`
    here (measured once per process, with the threads torch has then)."""
    global _worth
    if _worth is None:
        _worth = False
        if op() is not None:
            g = torch.Generator().manual_seed(0)
            x, w = torch.randn(256, 768, generator=g), torch.randn(3072, 768, generator=g)
            try:
                slow = best(lambda: torch.nn.functional.linear(x, w))
                fast = best(lambda: linear(x, w, None))
                _worth = fast * SPEED_NEEDED <= slow
            except RuntimeError:  # a build whose oneDNN cannot run it
                _worth = False
    return _worth


def float32_cpu(model: nn.Module) -> bool:
    """Every parameter of the model is float32 on the CPU, and this PyTorch has oneDNN's linear."""
    params = list(model.parameters())
    return (op() is not None and bool(params)
            and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params))


@contextmanager
def swapped(model: nn.Module) -> Iterator[int]:
    """While open, the model's plain linear layers run through oneDNN; yields how many."""
    layers = [(m, type(m)) for m in plain_linears(model)]
    for m, _ in layers:
        m.__class__ = OneDNNLinear
    try:
        yield len(layers)
    finally:
        for m, cls in layers:
            m.__class__ = cls


def onednn_copy(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of `model` that shares its parameters and buffers (no weight is copied) and runs its plain linear
    layers through oneDNN, and how many it swapped. The model itself is left as it is: a build's loaded models are
    shared."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    twin = copy.deepcopy(model, memo)
    layers = plain_linears(twin)
    for m in layers:
        m.__class__ = OneDNNLinear
    return twin, len(layers)


__all__ = ["SPEED_NEEDED", "OneDNNLinear", "best", "float32_cpu", "linear", "onednn_copy", "op", "plain_linears",
           "swapped", "worth_it"]
