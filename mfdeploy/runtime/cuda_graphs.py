"""CUDA graphs for the `torch-cuda` runners: each tower captured once per batch (and text length) bucket.

A tower called eagerly at batch 1 spends most of its time launching kernels
from Python (6.0 ms eager against 1.0 ms replayed for ViT-B/32 vision on an
H200, `benchmarks/results/gpu_check.md`). `GraphedTower` captures the tower
once per bucket at start-up, on static input buffers, and serves a call by
copying its inputs into the smallest bucket that holds them (the rest of the
buffer zeroed), replaying that graph and slicing the rows asked for:

- batch buckets: 1, 2, 4, ... up to the largest batch (`batch_buckets`); a
  larger call is served in slices of the largest bucket;
- text length buckets, for a family whose texts vary in length (CLIP):
  8, 16, 32, ... up to the model's text length. Padding a text with zero ids
  under a zero attention mask after its end changes no embedding (the text
  pools at its end token and attends causally), within float noise of the
  wider matmuls; SigLIP's texts have one fixed length.

Graphs share one memory pool (they are replayed one at a time, and each
result is copied out before the next replay). A tower whose capture fails (a
host synchronisation inside it, an op CUDA graphs cannot hold) stays eager,
with the reason kept in `GraphedTower.reason` for the runner to log. The
capture itself is a function argument, so the bucketing, padding and
slicing are tested on the CPU with a stand-in for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mfdeploy.errors import first_line

# capture(tower, static inputs, pool) -> (static output, replay): the inputs are the graph's own buffers
Capture = Callable[[Callable[..., torch.Tensor], Sequence[torch.Tensor], Any], tuple[torch.Tensor, Callable[[], None]]]
MIN_TEXT_BUCKET = 8


def batch_buckets(largest: int) -> list[int]:
    """1, 2, 4, ... below `largest`, then `largest` itself."""
    if largest < 1:
        raise ValueError(f"largest batch {largest}: must be at least 1")
    out, b = [], 1
    while b < largest:
        out.append(b)
        b *= 2
    return [*out, largest]


def length_buckets(longest: int) -> list[int]:
    """8, 16, 32, ... below `longest`, then `longest` itself (a shorter model: `longest` alone)."""
    out, n = [], MIN_TEXT_BUCKET
    while n < longest:
        out.append(n)
        n *= 2
    return [*out, longest]


def smallest_at_least(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds `n` (None: none does)."""
    return next((b for b in buckets if b >= n), None)


def capture_cuda(tower: Callable[..., torch.Tensor], static: Sequence[torch.Tensor],
                 pool: Any) -> tuple[torch.Tensor, Callable[[], None]]:
    """Warm `tower` up on a side stream, then capture one call on `static` into a CUDA graph (torch's recipe)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # lazy initialisation (cuBLAS handles, autotuning) happens outside the capture
            tower(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = tower(*static)
    return out, graph.replay


class GraphedTower:
    """A tower served from graphs captured per (batch, text length) bucket (module doc)."""

    def __init__(self, tower: Callable[..., torch.Tensor], example: Callable[[int, int | None], Sequence[torch.Tensor]],
                 max_batch: int, lengths: Sequence[int] | None = None, capture: Capture = capture_cuda,
                 pool: Any = None):
        """Capture every bucket now.

        Args:
            tower: the eager tower, called with positional tensors (batch first; text: `[B, L]` each).
            example: (batch, length or None) -> inputs of that shape on the tower's device.
            max_batch: the largest batch bucket.
            lengths: text length buckets (None: inputs of one fixed shape but the batch).
            capture: how a graph is captured (`capture_cuda`; tests pass a stand-in).
            pool: the memory pool the graphs share (`torch.cuda.graph_pool_handle()`).
        """
        self.tower, self.lengths = tower, list(lengths) if lengths else None
        self.batches = batch_buckets(max_batch)
        self.graphs: dict[tuple[int, int | None], tuple[list[torch.Tensor], torch.Tensor, Callable[[], None]]] = {}
        self.reason: str | None = None  # why the tower stays eager
        try:
            for b in self.batches:
                keys: list[int | None] = list(self.lengths) if self.lengths else [None]
                for n in keys:
                    static = [x.clone() for x in example(b, n)]
                    out, replay = capture(tower, static, pool)
                    self.graphs[(b, n)] = (static, out, replay)
        except Exception as e:  # capture raises RuntimeError (a sync in capture) and whatever the tower raises
            self.graphs.clear()
            self.reason = f"{type(e).__name__}: {first_line(e)}"

    @property
    def captured(self) -> bool:
        return bool(self.graphs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not self.graphs:
            return self.tower(*inputs)
        batch = inputs[0].shape[0]
        largest = self.batches[-1]
        if batch > largest:  # in slices of the largest bucket
            return torch.cat([self(*(x[i:i + largest] for x in inputs)) for i in range(0, batch, largest)])
        length = inputs[0].shape[1] if self.lengths else None
        key = (smallest_at_least(batch, self.batches),
               None if length is None else smallest_at_least(length, self.lengths or []))
        if key not in self.graphs:  # a text longer than every bucket: the model refuses it or runs it eagerly
            return self.tower(*inputs)
        static, out, replay = self.graphs[key]
        for buffer, x in zip(static, inputs, strict=True):
            buffer.zero_()
            buffer[tuple(slice(0, d) for d in x.shape)].copy_(x)
        replay()
        return out[:batch].clone()  # the next replay of any graph of the pool may overwrite `out`


__all__ = ["GraphedTower", "batch_buckets", "capture_cuda", "length_buckets", "smallest_at_least"]
