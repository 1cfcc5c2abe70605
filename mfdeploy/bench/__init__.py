"""Bench: interleaved timing of a build's backends (pruned vs dense), its reports and their stability flags.

`run_bench` and the report writers are imported on first use, so importing
this package loads neither torch nor matplotlib.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_LAZY = {
    "run_bench": "mfdeploy.bench.run",
    "parse_batch_sizes": "mfdeploy.bench.run",
    "parse_list": "mfdeploy.bench.run",
    "time_interleaved": "mfdeploy.bench.timing",
    "write_reports": "mfdeploy.bench.report",
    "load_average": "mfdeploy.bench.stability",
    "warning": "mfdeploy.bench.stability",
}

__all__ = ["load_average", "parse_batch_sizes", "parse_list", "run_bench", "time_interleaved", "warning",
           "write_reports"]

if TYPE_CHECKING:  # pragma: no cover
    from mfdeploy.bench.report import write_reports
    from mfdeploy.bench.run import parse_batch_sizes, parse_list, run_bench
    from mfdeploy.bench.stability import load_average, warning
    from mfdeploy.bench.timing import time_interleaved


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
