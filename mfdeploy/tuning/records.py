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

import math
from dataclasses import dataclass
from typing import Any

from mfdeploy.errors import is_number, is_whole

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


STATES = ("complete", "screened", "failed")
CONFIG_FIELDS = ("method", "ratio", "precision", "budget", "pattern", "distill_steps")


def is_finite(value: object) -> bool:
    """A number that is neither NaN nor infinite (Optuna refuses those as objective values)."""
    return is_number(value) and math.isfinite(value)  # type: ignore[arg-type]


def record_problem(record: object) -> str | None:
    """What makes `record` (one parsed journal line) unusable as a trial record, or None: the fields the search,
    the front and the reports read, by state (module doc)."""
    if not isinstance(record, dict):
        return "not an object"
    if not isinstance(record.get("key"), str) or record.get("state") not in STATES:
        return "no key, or a state other than " + "/".join(STATES)
    if not (is_whole(record.get("number")) and 0 <= record["number"] < 10**9) or \
            not isinstance(record.get("seconds"), dict):
        return "no trial number (0 or more) or seconds"
    config = record.get("config")
    if not isinstance(config, dict) or set(config) != set(CONFIG_FIELDS):
        return "no configuration (" + ", ".join(CONFIG_FIELDS) + ")"
    if record["state"] == "complete":
        quality, speed = record.get("quality"), record.get("speed")
        if not (isinstance(quality, dict) and all(is_finite(quality.get(k)) for k in ("retention", "drop_points"))
                and isinstance(speed, dict) and all(is_finite(speed.get(k)) for k in ("speedup", "latency_ms"))
                and is_finite(record.get("size_mb")) and isinstance(record.get("build"), str)):
            return "a complete trial without its quality, speed, size or build (finite numbers)"
    elif not isinstance(record.get("reason"), str):
        return f"a {record['state']} trial without its reason"
    return None


def dense_problem(dense: object) -> str | None:
    """What makes `dense` (a parsed `dense.json`) unusable as the dense reference, or None: its two
    evaluations (the first rung's and the full one), each with task accuracies or retrieval recalls."""
    def evaluation(value: object) -> bool:
        return isinstance(value, dict) and (isinstance(value.get("tasks"), dict)
                                            or isinstance(value.get("retrieval"), dict))

    if not (isinstance(dense, dict) and evaluation(dense.get("screen")) and evaluation(dense.get("full"))):
        return "not the first rung's and the full evaluation of the dense model"
    return None


__all__ = ["CONFIG_FIELDS", "DEFAULT_MAX_DROP", "STATES", "Constraints", "Record", "dense_problem", "is_finite",
           "record_problem"]
