"""The runner interface every backend implements."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from mfdeploy.artifacts.layout import INPUT_NAMES


def wall_seconds(call: Callable[[], Any]) -> float:
    """Seconds one call of `call` takes by the wall clock."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class BackendUnavailable(Exception):
    """A backend cannot run on this machine; the message says why (missing package, no GPU...)."""


class Runner(ABC):
    """Embeds images and texts with one backend; inputs and outputs are numpy arrays."""

    name: str  # backend name, e.g. "torch", "ort-cpu"
    device: str = "cpu"
    timing = "wall clock"  # how `time_call` measures (reported beside each benchmark row)
    precision = "f32"  # the arithmetic precision it runs in, as the backend reports it (bench rows show it)

    @abstractmethod
    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """`[B,3,H,W] float32 -> [B,D] float32`, L2-normalised."""

    @abstractmethod
    def embed_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """`[B,L] int64, [B,L] int64 -> [B,D] float32`, L2-normalised."""

    def tower_precision(self, tower: str) -> str:
        """The precision a tower's compute layers ran in (default: the runner's `precision`)."""
        return self.precision

    def time_call(self, call: Callable[[], Any]) -> float:
        """Seconds one call of `call` (an inference of this runner's) takes; it returns with its outputs on the
        host, so the wall clock around it covers the whole call."""
        return wall_seconds(call)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions/engines."""


def graph_feed(tower: str, arrays: Sequence[np.ndarray], inputs: Iterable[tuple[str, Any]]) -> dict[str, np.ndarray]:
    """The feed of an exported tower whose graph inputs are `inputs` [(name, numpy dtype or None)].

    Each array goes by its name in the artifact contract (`INPUT_NAMES`), else by position (a SigLIP
    text tower takes `input_ids` alone), cast to the graph's own type and made contiguous.
    """
    by_name = dict(zip(INPUT_NAMES[tower], arrays, strict=False))
    feed = {}
    for k, (name, dtype) in enumerate(inputs):
        a = by_name.get(name, arrays[k])
        feed[name] = np.ascontiguousarray(a, dtype=dtype or a.dtype)
    return feed


class GraphRunner(Runner):
    """A runner over exported graphs (ONNX Runtime, OpenVINO, TensorRT): both towers go through `_run`."""

    @abstractmethod
    def _run(self, tower: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """The tower's `[B,D] float32` embeddings for its inputs, in the artifact contract's order."""

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._run("vision", [pixel_values])

    def embed_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._run("text", [input_ids, attention_mask])
