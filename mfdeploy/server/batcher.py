"""Dynamic batching: concurrent requests for one tower gathered into one model call.

A request's items join a queue. A worker takes the oldest request and waits
until `max_batch` items are waiting or `max_delay` has passed since that
request arrived, then runs every request that fits in `max_batch` (always at
least one; a request larger than `max_batch` runs alone, in chunks) as one
call on a worker thread, so the event loop keeps accepting requests while the
model runs. The queue is bounded in items: a request that would overflow it
is refused at once (`QueueFull`), never parked.

On shutdown (`drain`) the batcher stops waiting for company and answers
`ShuttingDown` (a 503) at once to every queued request, and to every request
still submitted, that the measured seconds per item say cannot finish by the
deadline; at the deadline itself every request still unanswered gets it too,
so a model call that overruns its estimate cannot hold a client past the
grace period.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mfdeploy.server.metrics import Metrics

Rows = tuple[np.ndarray, np.ndarray]  # ([N, D] embeddings, [N] counts)


class QueueFull(Exception):
    """The tower's queue holds `max_queue` items already: answer 503 and let the client retry."""


class ShuttingDown(Exception):
    """The server is stopping and cannot answer this request in its grace period: 503, retry elsewhere."""


async def first_of(work: Awaitable[Any], other: Awaitable[Any],
                   timeout_s: float | None = None) -> tuple[bool, Any, bool]:
    """Await `work` until it ends, `other` ends or `timeout_s` passes; `other` is cancelled then, either way.

    Returns:
        (True, `work`'s result, False) when it ended first; else (False, None, whether `other` ended), with
        `work` cancelled and left to end on its own (a thread it waits for cannot be stopped mid-call).
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(other)
    try:
        done, _ = await asyncio.wait({task, watch}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the awaiting request itself was cancelled: so is its work
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return True, task.result(), False
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" noise
    return False, None, watch in done


class ModelThread(Executor):
    """One daemon thread that runs the model calls of every tower, one at a time, in order.

    Not a ThreadPoolExecutor: the interpreter joins its threads at exit, so a model call that overruns the
    shutdown grace period (its requests answered 503 by then) would hold the process past it.
    """

    def __init__(self, name: str = "mfdeploy-model"):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self.busy = False  # a call is running (then the runner must not be closed under it)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:  # noqa: D102 - Executor's
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def _loop(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            self.busy = True
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                future.set_exception(e)
            finally:
                self.busy = False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: D102 - Executor's
        self._calls.put(None)
        if wait:
            self._thread.join()


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

    SMOOTHING = 0.3  # weight of the newest call in the seconds-per-item estimate

    def __init__(self, tower: str, run: Callable[[Sequence[Any]], Rows], max_batch: int, max_delay_s: float,
                 max_queue: int, executor: Executor, metrics: Metrics):
        self.tower, self.run, self.executor, self.metrics = tower, run, executor, metrics
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self._pending: deque[_Job] = deque()
        self._running: list[_Job] = []  # the jobs of the model call in flight
        self._waiting = 0  # items in _pending
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._per_item: float | None = None  # seconds per item of recent calls (None: no call measured yet)
        self._deadline: float | None = None  # time.monotonic() by which every request is answered (draining)

    @property
    def waiting(self) -> int:
        """Items queued, not yet in a model call."""
        return self._waiting

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.tower}")

    def drain(self, deadline: float) -> None:
        """Shut down gracefully: answer every request by `deadline` (a `time.monotonic()` time).

        Queued requests that cannot finish by the deadline get `ShuttingDown` now, and so do requests submitted
        later (those the app had begun before the signal) that cannot; the rest run without waiting for company.
        At the deadline every request still unanswered gets it.
        """
        self._deadline = deadline
        self._shed()
        asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()), self._fail_all)
        self._wake.set()

    async def stop(self) -> None:
        """Stop the worker; requests still queued or running get `ShuttingDown` (`drain` answers them first)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail_all()

    async def submit(self, items: Sequence[Any]) -> Rows:
        """Queue `items` and wait for their rows (`[len(items), D]`, and `[len(items)]` counts).

        Raises:
            QueueFull: the queue cannot take them now.
            ShuttingDown: the server is stopping and they cannot be answered in its grace period.
        """
        if self._waiting + len(items) > self.max_queue:
            self.metrics.queue_full.labels(self.tower).inc()
            raise QueueFull(f"the {self.tower} queue is full ({self._waiting} items waiting, at most "
                            f"{self.max_queue})")
        job = _Job(items, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._add(len(items))
        self._shed()  # draining: refused at once unless it can finish by the deadline
        return await job.future

    def _add(self, n: int) -> None:
        self._waiting += n
        self.metrics.queue_depth.labels(self.tower).set(self._waiting)
        self._wake.set()

    def _refuse(self, job: _Job, why: str) -> None:
        if not job.future.done():
            job.future.set_exception(ShuttingDown(f"the server is shutting down: {why}"))

    def _fail_all(self) -> None:
        """Answer every queued and running request `ShuttingDown` (the deadline passed, or the worker stopped)."""
        for job in [*self._running, *self._pending]:
            self._refuse(job, "the request could not finish in the grace period")
        self._add(-self._waiting)
        self._pending.clear()

    def _shed(self) -> None:
        """While draining, refuse the queued requests that the estimate says would finish after the deadline."""
        if self._deadline is None:
            return
        now = time.monotonic()
        if self._per_item is None:  # nothing measured yet: only a passed deadline is known to be too late
            if now >= self._deadline:
                self._fail_all()
            return
        end = now + self._per_item * sum(len(j.items) for j in self._running)  # the call in flight, from now
        kept: deque[_Job] = deque()
        for job in self._pending:
            finish = end + self._per_item * len(job.items)
            if job.future.done():
                continue
            if finish > self._deadline:
                self._refuse(job, f"{len(job.items)} queued {self.tower} items would not finish in the grace "
                             "period")
            else:
                kept.append(job)
                end = finish
        self._pending = kept
        self._add(sum(len(j.items) for j in kept) - self._waiting)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = self._pending[0].arrived + self.max_delay_s
            while (self._deadline is None and self._waiting < self.max_batch
                   and (left := deadline - time.monotonic()) > 0):  # draining: no company is coming
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            self._shed()
            jobs: list[_Job] = []
            n = 0
            while self._pending and (not jobs or n + len(self._pending[0].items) <= self.max_batch):
                job = self._pending.popleft()
                jobs.append(job)
                n += len(job.items)
            self._add(-n)
            jobs = [j for j in jobs if not j.future.done()]  # a client that went away needs no answer
            if not jobs:
                continue
            items = [item for j in jobs for item in j.items]
            self._running = jobs
            try:
                rows, counts = await loop.run_in_executor(self.executor, self._call, items)
            except Exception as e:  # noqa: BLE001 - the requests get the error; the worker serves on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            finally:
                self._running = []
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result((rows[start:start + len(j.items)], counts[start:start + len(j.items)]))
                start += len(j.items)

    def _call(self, items: Sequence[Any]) -> Rows:
        """`run` over `items` in chunks of at most `max_batch` (on the executor's thread).

        Only a request larger than `max_batch` makes several chunks (the worker gathers at most `max_batch`
        items otherwise), so a chunk refused for the shutdown deadline refuses that one request.
        """
        out: list[Rows] = []
        for start in range(0, len(items), self.max_batch):
            chunk = items[start:start + self.max_batch]
            if (self._deadline is not None and self._per_item is not None
                    and time.monotonic() + self._per_item * len(chunk) > self._deadline):
                raise ShuttingDown(f"the server is shutting down: {len(items)} {self.tower} items would not "
                                   "finish in the grace period")
            t0 = time.perf_counter()
            out.append(self.run(chunk))
            seconds = time.perf_counter() - t0
            per_item = seconds / len(chunk)
            self._per_item = per_item if self._per_item is None else \
                self.SMOOTHING * per_item + (1 - self.SMOOTHING) * self._per_item
            self.metrics.inference.labels(self.tower).observe(seconds)
            self.metrics.batch_size.labels(self.tower).observe(len(chunk))
        return np.concatenate([r for r, _ in out], axis=0), np.concatenate([c for _, c in out], axis=0)


__all__ = ["Batcher", "ModelThread", "QueueFull", "ShuttingDown"]
