"""What the running server holds: the runner, the preprocessor, one batcher per tower, and its readiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mfdeploy.artifacts.layout import PRUNED_DIR
from mfdeploy.errors import MfdeployError
from mfdeploy.runtime.base import BackendUnavailable
from mfdeploy.server.batcher import Batcher
from mfdeploy.server.config import BACKENDS, ServeConfig
from mfdeploy.server.metrics import Metrics
from mfdeploy.server.preprocess import Preprocessor

log = logging.getLogger("mfdeploy.server")


class ServerState:
    """Loads the build's towers when the app starts (in a thread: `/health` answers 503 meanwhile).

    Args:
        cfg: the validated configuration.
        on_failure: called with the reason when loading fails (the CLI stops the server there).
    """

    def __init__(self, cfg: ServeConfig, on_failure: Callable[[str], None] | None = None):
        self.cfg, self.on_failure = cfg, on_failure
        self.metrics = Metrics()
        self.ready = False
        self.error: str | None = None
        self.runner: Any = None
        self.pre: Preprocessor | None = None  # type: ignore[assignment]
        self.batchers: dict[str, Batcher] = {}
        self.model_name = ""
        self.embed_dim = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mfdeploy-model")  # one model call at a time
        self._loading: asyncio.Task | None = None

    def load(self) -> None:
        """Open the build, its preprocessing and the runner (blocking; runs on a thread)."""
        from mfdeploy.runtime import BuildDir, make_runner

        build = BuildDir(self.cfg.build_dir)
        backend, variant = BACKENDS[self.cfg.backend]
        pre = Preprocessor(build.path / PRUNED_DIR)
        # no spinning: idle ONNX Runtime threads would busy-wait on the cores the event loop needs
        runner = make_runner(backend, build, variant=variant, threads=self.cfg.threads,
                             max_batch=self.cfg.max_batch, max_text_len=pre.max_text_len, spin=False)
        probe = runner.embed_texts(*pre.texts(["a"]))  # one real call: a backend that cannot run fails here
        self.model_name = f"{build.model or 'model'} ({build.manifest.get('method')} "\
                          f"{build.manifest.get('ratio')}, {self.cfg.backend})"
        self.embed_dim = int(probe.shape[1])
        self.pre, self.runner = pre, runner

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One model call on texts (the text batcher's): embeddings and tokens per text."""
        ids, mask = self.pre.texts(texts)
        return self.runner.embed_texts(ids, mask), mask.sum(axis=1)  # tokens per text, for `usage`

    def embed_images(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """One model call on decoded images (the vision batcher's): embeddings and zero counts."""
        return self.runner.embed_images(self.pre.images(images)), np.zeros(len(images), dtype=np.int64)

    async def start(self) -> None:
        """Begin loading; the batchers start once the towers are loaded."""
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.load)
        except (MfdeployError, BackendUnavailable, OSError, ValueError) as e:
            self.error = f"cannot serve {self.cfg.build_dir} with {self.cfg.backend}: {e}"
            log.error("%s", self.error)
            if self.on_failure is not None:
                self.on_failure(self.error)
            return
        cfg = self.cfg
        for tower, run in (("vision", self.embed_images), ("text", self.embed_texts)):
            self.batchers[tower] = Batcher(tower, run, cfg.max_batch, cfg.max_delay_ms / 1000, cfg.max_queue,
                                           self._executor, self.metrics)
            self.batchers[tower].start()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("serving %s with %s: ready", cfg.build_dir, cfg.backend)

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        for batcher in self.batchers.values():
            await batcher.stop()
        self.ready = False
        if self.runner is not None:
            self.runner.close()
        self._executor.shutdown(wait=False)


__all__ = ["ServerState"]
