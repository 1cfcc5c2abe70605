"""Dynamic batching: concurrent requests for one tower gathered into one model call.

A request's items join a queue. A worker takes the oldest request and waits
until `max_batch` items are waiting or `max_delay` has passed since that
request arrived, then runs every request that fits in `max_batch` (always at
least one; a request larger than `max_batch` runs alone, in chunks) as one
call on a worker thread, so the event loop keeps accepting requests while the
model runs. The queue is bounded in items: a request that would overflow it
is refused at once (`QueueFull`), never parked.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mfdeploy.server.metrics import Metrics

Rows = tuple[np.ndarray, np.ndarray]  # ([N, D] embeddings, [N] counts)


class QueueFull(Exception):
    """The tower's queue holds `max_queue` items already: answer 503 and let the client retry."""


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers the items of concurrent requests for one tower into calls of `run`.

    Args:
        tower: "vision" or "text" (metrics label).
        run: items -> (`[N, D]` embeddings, `[N]` per-item counts such as tokens), in item order; runs on
            `executor`.
        max_batch: most items per call.
        max_delay_s: longest the oldest waiting request waits for company.
        max_queue: most items waiting.
        executor: where `run` runs (one thread for every tower: calls never compete for the cores).
        metrics: where batch sizes, queue depth and inference times go.
    """

    def __init__(self, tower: str, run: Callable[[Sequence[Any]], Rows], max_batch: int, max_delay_s: float,
                 max_queue: int, executor: Executor, metrics: Metrics):
        self.tower, self.run, self.executor, self.metrics = tower, run, executor, metrics
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self._pending: deque[_Job] = deque()
        self._waiting = 0  # items in _pending
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        """Items queued, not yet in a model call."""
        return self._waiting

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.tower}")

    async def stop(self) -> None:
        """Stop the worker; requests still queued get an error (graceful shutdown drains them first)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()

    async def submit(self, items: Sequence[Any]) -> Rows:
        """Queue `items` and wait for their rows (`[len(items), D]`, and `[len(items)]` counts).

        Raises:
            QueueFull: the queue cannot take them now.
        """
        if self._waiting + len(items) > self.max_queue:
            self.metrics.queue_full.labels(self.tower).inc()
            raise QueueFull(f"the {self.tower} queue is full ({self._waiting} items waiting, at most "
                            f"{self.max_queue})")
        job = _Job(items, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._add(len(items))
        return await job.future

    def _add(self, n: int) -> None:
        self._waiting += n
        self.metrics.queue_depth.labels(self.tower).set(self._waiting)
        self._wake.set()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = self._pending[0].arrived + self.max_delay_s
            while self._waiting < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            jobs, n = [], 0
            while self._pending and (not jobs or n + len(self._pending[0].items) <= self.max_batch):
                job = self._pending.popleft()
                jobs.append(job)
                n += len(job.items)
            self._add(-n)
            jobs = [j for j in jobs if not j.future.done()]  # a client that went away needs no answer
            if not jobs:
                continue
            items = [item for j in jobs for item in j.items]
            try:
                rows, counts = await loop.run_in_executor(self.executor, self._call, items)
            except Exception as e:  # noqa: BLE001 - the requests get the error; the worker serves on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result((rows[start:start + len(j.items)], counts[start:start + len(j.items)]))
                start += len(j.items)

    def _call(self, items: Sequence[Any]) -> Rows:
        """`run` over `items` in chunks of at most `max_batch` (on the executor's thread)."""
        out: list[Rows] = []
        for start in range(0, len(items), self.max_batch):
            chunk = items[start:start + self.max_batch]
            t0 = time.perf_counter()
            out.append(self.run(chunk))
            self.metrics.inference.labels(self.tower).observe(time.perf_counter() - t0)
            self.metrics.batch_size.labels(self.tower).observe(len(chunk))
        return np.concatenate([r for r, _ in out], axis=0), np.concatenate([c for _, c in out], axis=0)


__all__ = ["Batcher", "QueueFull"]
