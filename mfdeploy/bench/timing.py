"""The timing loops of `run_bench` and the benchmark scripts: variants in alternating order, or in alternating blocks.

Both run every variant in the same stretch of time, so drift and other
processes hit them alike and their ratios stay meaningful on a shared host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mfdeploy.runtime.base import wall_seconds

__all__ = ["MAX_ITERS", "SETTLE_S", "time_blocks", "time_interleaved"]
MAX_ITERS = 10_000  # cap on timed iterations per cell when --min-time keeps asking for more


def time_interleaved(
    calls: dict[str, Callable[[], Any]], warmup: int, iters: int, min_time: float = 0.0,
    timers: dict[str, Callable[[Callable[[], Any]], float]] | None = None,
) -> dict[str, np.ndarray]:
    """Latencies in seconds of each call, timed in alternating order.

    Args:
        calls: variant name -> a zero-argument function doing one inference.
        warmup: untimed rounds first (first-call allocations, lazy kernels, engine builds).
        iters: at least this many timed rounds.
        min_time: and keep going until each call has run at least this many
            seconds in total (bounded by `MAX_ITERS`).
        timers: variant name -> what times one call of it (a runner's `time_call`: CUDA events for torch on a
            GPU); the wall clock for a name without one.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    order = list(calls)
    clocks = {name: (timers or {}).get(name, wall_seconds) for name in order}
    lat: dict[str, list[float]] = {name: [] for name in order}
    spent = dict.fromkeys(order, 0.0)
    i = 0
    while i < iters or (min(spent.values()) < min_time and i < MAX_ITERS):
        for name in order if i % 2 == 0 else order[::-1]:
            dt = clocks[name](calls[name])
            lat[name].append(dt)
            spent[name] += dt
        i += 1
    return {name: np.asarray(v) for name, v in lat.items()}


SETTLE_S = 0.05  # untimed seconds at the head of each block of `time_blocks` (its docstring)


def time_blocks(calls: dict, rounds: int, block: int, settle: float = SETTLE_S) -> dict[str, np.ndarray]:
    """Latencies in seconds per call name: `rounds` rounds, each running every call in a block of back-to-back
    calls, untimed ones for at least `settle` seconds (one at least) and then `block` timed ones.

    Each call runs as a serving process runs it (its own threads warm, spinning
    if its session spins), while drift on a shared host still hits every name
    alike. The untimed head of each block pays for the previous name having
    just run: cold worker threads, its weights in the cache, and its threads
    still spinning. ONNX Runtime's spinning threads keep competing for the
    cores for about 20 ms after its last call: on 2 cores, the bf16 torch
    text tower compiled (3.4 ms a call) timed right after blocks of ONNX
    Runtime calls took 7.5, 7.5, 6.2, 3.6 and 3.5 ms for its 2nd to 6th
    calls, and 3.4-3.5 ms for each once the block's first 50 ms were
    untimed (`benchmarks/results/block_settle.txt`): torch over ONNX Runtime
    read 1.04x one way and 2.00x the other. One untimed call does not cover
    that for calls of a few milliseconds; 50 ms do. The order alternates
    between rounds.
    """
    order = list(calls)
    lat: dict[str, list[float]] = {name: [] for name in order}
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            calls[name]()
            while time.perf_counter() - start < settle:
                calls[name]()
            for _ in range(block):
                lat[name].append(wall_seconds(calls[name]))
    return {name: np.asarray(v) for name, v in lat.items()}
