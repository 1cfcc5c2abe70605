"""What `mfdeploy tune` is asked (`TuneConfig`) and what it returns (`TuneResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdeploy.tuning.records import Constraints, Record


@dataclass
class TuneConfig:
    """What `mfdeploy tune` is asked (the CLI and `mfdeploy.tuning` build one)."""

    out: Path = Path("tune")
    model: str | None = None  # None: the bundled model
    calib: str | None = None
    eval_data: str | None = None  # None: the shapes suite for a bundled model (required otherwise)
    backend: str = "ort-cpu"
    batch_size: int = 8
    constraints: Constraints = field(default_factory=Constraints)
    time_budget_min: float = 15.0
    space: str = "default"
    force: bool = False
    seed: int = 0
    threads: int | None = None


@dataclass
class TuneResult:
    """What a tune returns: every trial, the front (trial records), the pick (None: nothing met the constraints)
    and the reason, and where the outputs are."""

    trials: list[Record]
    front: list[Record]
    pick: Record | None
    why: str
    out: Path
    summary: dict[str, Any]


__all__ = ["TuneConfig", "TuneResult"]
