"""Sparse kernels only where they win: each 2:4 linear timed dense and sparse at the serving token counts.

On an H200, one cuSPARSELt linear beat its dense twin only at 12800 tokens
and 3072x768 (1.29x); at the token counts of a ViT-B/32 batch of 1 or 32 it
lost (`benchmarks/results/gpu_check.md`). TensorRT decides per layer; so does
`torch-cuda-sparse` now. At start-up, each 2:4 linear is timed with its dense
weight and with its compressed one at the row counts it sees when serving
(its rows for a batch of 1, found by running each tower once with hooks,
times the smallest and the largest batch bucket), each time as the mean of
replays of a CUDA graph holding only that matmul, so that host overhead
does not decide. The sparse form is kept where its summed time is lower.

`choose` takes the timing function as an argument, so the decision and its
record are tested on the CPU with made-up times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

# time(weight, bias, rows) -> seconds per call of linear(x [rows, in], weight, bias); with FP8 the "weight" is the
# whole linear module (`Fp8Linear` or `Fp8SparseLinear`, `time_module_cuda`)
TimeLinear = Callable[[Any, torch.Tensor | None, int], float]


def rows_per_call(model: nn.Module, calls: Sequence[Callable[[], Any]]) -> dict[str, int]:
    """Rows (tokens x batch) each `nn.Linear` of `model` sees in `calls` (each tower run once at batch 1)."""
    rows: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(
                lambda m, a, name=name: rows.__setitem__(name, a[0].numel() // a[0].shape[-1])))
    try:
        with torch.inference_mode():
            for call in calls:
                call()
    finally:
        for h in handles:
            h.remove()
    return rows


def choose(name: str, dense: Any, sparse: Any, bias: torch.Tensor | None, rows: Sequence[int],
           time_linear: TimeLinear) -> dict[str, Any]:
    """Whether the 2:4 linear `name` runs faster sparse at the serving row counts, with the times behind it.

    Returns:
        `{"sparse": bool, "rows": [...], "dense_ms": [...], "sparse_ms": [...]}`: sparse when its summed
        time over `rows` is lower than dense's.
    """
    dense_ms = [1e3 * time_linear(dense, bias, n) for n in rows]
    sparse_ms = [1e3 * time_linear(sparse, bias, n) for n in rows]
    return {"sparse": sum(sparse_ms) < sum(dense_ms), "rows": list(rows),
            "dense_ms": [round(t, 4) for t in dense_ms], "sparse_ms": [round(t, 4) for t in sparse_ms]}


def summary(choices: dict[str, dict[str, Any]]) -> str:
    """"N of M linears sparse" (M: the 2:4 linears timed)."""
    return f"{sum(c['sparse'] for c in choices.values())} of {len(choices)} linears sparse"


def time_linear_cuda(weight: torch.Tensor, bias: torch.Tensor | None, rows: int, replays: int = 20) -> float:
    """Mean seconds of `linear(x [rows, in], weight, bias)` replayed from a CUDA graph, timed with CUDA events."""
    x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
    return graph_seconds(lambda: nn.functional.linear(x, weight, bias), replays)


def time_module_cuda(module: Any, _bias: torch.Tensor | None, rows: int, replays: int = 20) -> float:
    """Mean seconds of `module(x [rows, in])` (x in bfloat16, what the FP8 towers pass) replayed from a CUDA
    graph; `_bias` is the module's own and is ignored (the `TimeLinear` signature)."""
    buffer = next(module.buffers())
    x = torch.randn(rows, module.in_features, dtype=torch.bfloat16, device=buffer.device)
    return graph_seconds(lambda: module(x), replays)


@torch.inference_mode()
def graph_seconds(call: Callable[[], Any], replays: int = 20) -> float:
    """Mean seconds of `call` captured once in a CUDA graph and replayed `replays` times (CUDA events)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / replays


__all__ = ["TimeLinear", "choose", "graph_seconds", "rows_per_call", "summary", "time_linear_cuda",
           "time_module_cuda"]
