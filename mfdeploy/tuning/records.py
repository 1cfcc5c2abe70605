"""What a tune trial records (one JSON line of `DIR/trials.jsonl` per finished trial) and the constraints.

A trial record is a plain dict (it is written and read as JSON):

    {"number": 3,                        # order in which trials finished, from 0
     "key": "mope r=0.5 int8",           # the configuration, unique within a tune directory
     "config": {"method": "mope", "ratio": 0.5, "budget": None, "pattern": None,
                "precision": "int8", "distill_steps": 0},
     "state": "complete" | "screened" | "failed",
     "reason": "...",                    # screened / failed: why, in one line
     "screen": {"metric": ..., "value": 0.71, "drop_points": 2.3, "seconds": 1.2},   # the cheap first rung
     "quality": {"metric": "mean zero-shot accuracy", "value": 0.83, "drop_points": 0.4,
                 "retention": 0.995,     # mean over tasks of candidate / dense accuracy
                 "tasks": {...}, "retrieval": {...}, "backend": "onnx-int8", ...},     # complete only
     "speed": {"speedup": 2.4,           # dense p50 / candidate p50, both towers at --batch-size
               "latency_ms": 1.9,        # candidate p50, vision + text
               "towers": {"vision": {"p50_ms", "dense_p50_ms", "speedup"}, "text": {...}},
               "shared_with": None | "key of the trial whose timing this one reuses", ...},
     "size_mb": 3.1,                     # the towers this configuration serves, on disk
     "build": "work/builds/<hash>",      # relative to DIR
     "seconds": {"total": 21.0, ...}}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]
DEFAULT_MAX_DROP = 1.0  # points of mean zero-shot accuracy, when no constraint is given


@dataclass(frozen=True)
class Constraints:
    """What the pick must satisfy; None = unbounded. With none given, `max_drop` is `DEFAULT_MAX_DROP`."""

    max_drop: float | None = None  # points of mean task accuracy below dense
    min_speedup: float | None = None  # over dense, same backend, same run
    max_latency_ms: float | None = None  # p50 of vision + text at the batch size
    max_size_mb: float | None = None  # the served towers on disk

    def effective(self) -> Constraints:
        """These constraints, or the default `--max-drop 1` when none is set."""
        if all(v is None for v in (self.max_drop, self.min_speedup, self.max_latency_ms, self.max_size_mb)):
            return Constraints(max_drop=DEFAULT_MAX_DROP)
        return self

    def describe(self) -> str:
        """`--max-drop 1, --min-speedup 2` (the flags as a user types them)."""
        parts = [f"{flag} {value:g}" for flag, value in (
            ("--max-drop", self.max_drop), ("--min-speedup", self.min_speedup),
            ("--max-latency-ms", self.max_latency_ms), ("--max-size-mb", self.max_size_mb)) if value is not None]
        return ", ".join(parts) or "none"


__all__ = ["DEFAULT_MAX_DROP", "Constraints", "Record"]
