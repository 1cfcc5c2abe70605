"""The prune configuration: a typed dataclass the CLI and the API build (its checks are `pruning.checks`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PruneConfig:
    """Everything `mfdeploy prune` needs; built by the CLI, never from CLI objects.

    `method` picks the score (and, unless `budget` is given, its default layer
    budget); `budget` overrides the layer budget of any unstructured score.
    """

    ratio: float
    model: str | None = None  # None = bundled
    method: str = "multiflow"
    budget: str | None = None  # None = the method's default (registry)
    pattern: str | None = None
    calib: str | None = None  # "shapes" | PAIRS.jsonl; default shapes for the bundled model
    calib_samples: int = 256
    batch_size: int = 32
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    show_progress: bool = True
    # ecoflap budget
    ecoflap_smax_delta: float = 0.1
    ecoflap_samples: int = 32
    # mope
    mope_head_dim_group: int = 0
    mope_neuron_group: int = 64
    mope_depth_share: float = 0.0
    mope_cache: Path | None = None  # a folder of module errors earlier runs scored (content-addressed), reused
    # recovery (every method): distillation from the dense model, masks held fixed
    distill_steps: int = 0
    distill_lr: float = 1e-4
    distill_params: str = "all"  # all | prunable
    # where `mfdeploy prune`/`build` run the model, and in which precision (statistics and scores stay float32)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float16 | bfloat16


__all__ = ["PruneConfig"]
