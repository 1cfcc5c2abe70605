"""What the running server holds: the runner, the preprocessor, one batcher per tower, and its readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from mfdeploy.data.images import allow_pixels
from mfdeploy.errors import MfdeployError, first_line
from mfdeploy.platform import physical_cores
from mfdeploy.runtime.base import BackendUnavailable
from mfdeploy.server.batcher import Batcher, ModelThread, ShuttingDown, first_of
from mfdeploy.server.config import ServeConfig
from mfdeploy.server.metrics import Metrics
from mfdeploy.server.preprocess import Preprocessor
from mfdeploy.server.source import Served, make_runner, resolve

log = logging.getLogger("mfdeploy.server")


class ServerState:
    """Loads the towers when the app starts (in a thread: `/health` answers 503 meanwhile).

    Args:
        cfg: the validated configuration.
        on_failure: called with the reason when loading fails (the CLI stops the server there).
        served: what to serve, from `source.resolve(cfg)` (resolved at load time when not given).
    """

    def __init__(self, cfg: ServeConfig, on_failure: Callable[[str], None] | None = None,
                 served: Served | None = None):
        self.cfg, self.on_failure, self.served = cfg, on_failure, served
        allow_pixels(cfg.max_image_pixels)  # Pillow's own bomb limit never refuses what --max-image-pixels allows
        self.metrics = Metrics()
        self.ready = False
        self.draining = False  # SIGTERM came: no new requests, /health answers 503
        self.deadline: float | None = None  # time.monotonic() by which every request is answered (draining)
        self.stopped = asyncio.Event()  # set at the deadline: requests still unanswered get 503 then
        # Threads that decode images, about one per core (two at least, so one large picture cannot hold up every
        # small one): more would only share the cores, each picture taking longer, and one picture is what a
        # decoding thread finishes after the shutdown deadline before it stops (`image_pixels`). Requests waiting
        # for a thread wait on the event loop, where the deadline cancels them at once.
        self.decoders = anyio.CapacityLimiter(max(2, physical_cores()))
        self.error: str | None = None
        self.runner: Any = None
        self.pre: Preprocessor = None  # type: ignore[assignment]  # set by load(); no request is taken before
        self.batchers: dict[str, Batcher] = {}
        self.model_name = ""
        self.embed_dim = 0
        self._executor = ModelThread()  # one model call at a time, for both towers
        self._loading: asyncio.Task | None = None
        self.left_running = False  # `stop` left a model call (or the loading) running on the model thread

    def load(self) -> None:
        """Open the model's preprocessing and the runner (blocking; runs on a thread)."""
        served = self.served = self.served or resolve(self.cfg)
        pre = Preprocessor(Path(served.checkpoint))
        # no spinning: idle ONNX Runtime threads would busy-wait on the cores the event loop needs
        runner = make_runner(served, self.cfg.backend, threads=self.cfg.threads, max_batch=self.cfg.max_batch,
                             max_text_len=pre.max_text_len, spin=False, **self.cfg.runner_options())
        if getattr(runner, "gate", None):  # below fp32: say what runs, and how close it came to the fp32 towers
            gate = runner.gate
            log.info("%s against the fp32 towers: %s", self.cfg.backend, ", ".join(
                f"{t} in {runner.tower_precision(t)}, min cosine {gate[t]['min_cosine']:.5f}"
                for t in ("vision", "text") if t in gate))
        if getattr(runner, "compiled_with", None):
            log.info("%s towers compiled with torch.compile (%s)", self.cfg.backend, runner.compiled_with)
        if getattr(runner, "linears", None):
            log.info("%s towers' linear layers run through %s", self.cfg.backend, runner.linears)
        probe = runner.embed_texts(*pre.texts(["a"]))  # one real call: a backend that cannot run fails here
        self.model_name = served.label
        self.embed_dim = int(probe.shape[1])
        self.pre, self.runner = pre, runner

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One model call on texts (the text batcher's): embeddings and tokens per text."""
        ids, mask = self.pre.texts(texts)
        return self.runner.embed_texts(ids, mask), self.pre.text_tokens(texts, mask)  # for `usage`

    def embed_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One model call on preprocessed images (`[3, H, W]` pixel values each; the vision batcher's).

        The queue holds these model-size arrays, never the decoded pictures (`preprocess.request_images`).
        """
        return self.runner.embed_images(np.stack(images)), np.zeros(len(images), dtype=np.int64)

    async def start(self) -> None:
        """Begin loading; the batchers start once the towers are loaded."""
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.load)
        except Exception as e:  # noqa: BLE001 - any failure to load ends the server: never 'loading' for ever
            why = str(e) if isinstance(e, (MfdeployError, BackendUnavailable, OSError)) else \
                f"{type(e).__name__}: {first_line(e)}"  # a loader's own error (safetensors, ONNX Runtime...)
            self.error = f"cannot serve {self.cfg.build_dir} with {self.cfg.backend}: {why}"
            log.error("%s", self.error)
            if self.on_failure is not None:
                self.on_failure(self.error)
            return
        cfg = self.cfg
        if self.draining:  # stopped while loading: nothing to serve
            return
        for tower, run in (("vision", self.embed_images), ("text", self.embed_texts)):
            self.batchers[tower] = Batcher(tower, run, cfg.max_batch, cfg.max_delay_ms / 1000, cfg.max_queue,
                                           self._executor, self.metrics)
            self.batchers[tower].start()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("serving %s: ready", self.model_name)

    def drain(self, grace_s: float) -> float:
        """Begin a graceful shutdown (on the event loop): no new requests, every request answered within `grace_s`.

        Returns:
            The `time.monotonic()` deadline by which every request is answered.
        """
        self.draining = True
        self.deadline = deadline = time.monotonic() + grace_s
        asyncio.get_running_loop().call_later(grace_s, self.stopped.set)
        for batcher in self.batchers.values():
            batcher.drain(deadline)
        return deadline

    def image_pixels(self, picture: Any) -> np.ndarray:
        """One decoded picture -> its `[3, H, W]` pixel values (on a decoding thread, between two pictures).

        Raises:
            ShuttingDown: the shutdown deadline passed: the request's answer (503) is sent already, and its
                remaining pictures are not decoded (a decoding thread would hold the process's exit).
        """
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise ShuttingDown("the server is shutting down")
        return self.pre.images([picture])[0]

    async def in_time(self, work: Awaitable[Any], timeout_s: float | None) -> Any:
        """`work`'s result, unless the request time limit or the shutdown deadline comes first.

        Then the work is cancelled and left to end on its own: the answer (504, or 503) does not wait for it,
        because a decoding thread cannot be stopped in the middle of a picture (it stops at the next one).

        Raises:
            asyncio.TimeoutError: `timeout_s` passed (a stuck model call, a slow upload).
            ShuttingDown: the shutdown deadline passed.
        """
        finished, result, stopped = await first_of(work, self.stopped.wait(), timeout_s)
        if finished:
            return result
        if stopped:
            raise ShuttingDown("the server is shutting down: the request could not finish in the grace period")
        raise asyncio.TimeoutError

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        for batcher in self.batchers.values():
            await batcher.stop()
        self.ready = False
        if self._executor.busy:  # a call overran the grace period: its requests got 503; the process exits anyway
            self.left_running = True
            log.warning("a model call (or the loading) was still running at shutdown: left to end with the process")
        elif self.runner is not None:
            self.runner.close()
        self._executor.shutdown(wait=False)


__all__ = ["ServerState"]
