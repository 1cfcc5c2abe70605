"""What `mfdeploy build` is asked to do (`BuildConfig`), what its stages share (`BuildState`), and what a stage is.

Apart from the stages themselves (`mfdeploy.pipelines.build`) so the report stage (`pipelines.report`) can read the
state without importing the build that runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import PRUNED_DIR
from mfdeploy.progress import Reporter
from mfdeploy.pruning.config import PruneConfig


@dataclass
class BuildConfig:
    """What `mfdeploy build` does; the prune part is a `PruneConfig`."""

    prune: PruneConfig
    out: Path = Path("build")
    fp16: bool = False
    sparse: str = "auto"
    opset: int = 17
    max_batch: int = 32
    max_text_len: int | None = None
    eval_data: str | None = None  # None: the shapes suite for the bundled model, no evaluation otherwise
    dense_onnx: bool = True  # also export the dense towers (onnx_dense/) and, on a GPU, build engines_dense/
    force: bool = False
    int8: bool = False  # also onnx_int8/ and onnx_qdq/ (mfdeploy.quantize), engines from onnx_qdq/
    # the quantize targets of --int8: "ort" makes onnx_int8/, "trt" onnx_qdq/ (where ModelOpt is installed); tune
    # asks only for the towers its backend serves
    int8_targets: tuple[str, ...] = ("ort", "trt")
    int8_scheme: str = "auto"  # onnx_int8/'s ONNX Runtime scheme: auto | static (OpenVINO runs it int8) | dynamic
    evaluate: bool = True  # False: no evaluation stages (`mfdeploy tune` evaluates through the served backend)


@dataclass
class BuildState:
    """What the stages share: the config, the temporary build directory, and the records stages returned."""

    cfg: BuildConfig
    tmp: Path
    eval_data: str | None
    records: dict[str, Any] = field(default_factory=dict)  # stage name -> what it returned
    reporter: Reporter | None = None  # the prune stage's progress (the CLI passes a console one)
    _models: dict[str, Any] = field(default_factory=dict)

    def model(self, variant: str) -> Any:
        """The dense checkpoint the build starts from, or the pruned checkpoint in `pruned/`, loaded once."""
        if variant not in self._models:
            from mfdeploy.models import load

            self._models[variant] = load(self.cfg.prune.model if variant == "dense" else self.tmp / PRUNED_DIR)
        return self._models[variant]

    def release(self, variant: str) -> None:
        """Drop a loaded model once no later stage needs it (a ViT-H-sized model is 4 GB)."""
        import gc

        if self._models.pop(variant, None) is not None:
            gc.collect()


@dataclass(frozen=True)
class Stage:
    """A named step: `run(state)` returns its record; `runs(cfg, state)` says whether it runs in this build."""

    name: str
    run: Callable[[BuildState], Any]
    runs: Callable[[BuildConfig, str | None], bool] = lambda cfg, eval_data: True


__all__ = ["BuildConfig", "BuildState", "Stage"]
