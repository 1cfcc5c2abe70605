"""Is a bench cell's timing trustworthy? Latency spread per cell, and the machine's load average.

On a loaded machine a cell's calls stall now and then; the median hides a
few stalls, but when the 95th percentile is more than twice the median the
pruned/dense ratio of that cell can be off by several times (6.99x and 0.49x
have been reported for towers whose real ratio is 1.0x). Such cells are
flagged, never dropped.
"""

from __future__ import annotations

import os
from typing import Any

SPREAD_LIMIT = 2.0  # p95 / p50 above this marks a cell unstable
MARK = "†"  # beside an unstable cell's ratio, in bench.md and the printed table


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (`os.getloadavg()`), or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # Windows has no getloadavg
        return None


def spread_reason(stats: dict[str, dict[str, Any]], limit: float = SPREAD_LIMIT) -> str | None:
    """Why a cell is unstable, or None: every variant whose p95 latency exceeds `limit` x its p50.

    Args:
        stats: variant ("pruned", "dense") -> at least `p50_ms` and `p95_ms`.
        limit: the largest p95 / p50 still taken as stable.
    """
    wide = [f"{variant} p95 {s['p95_ms'] / s['p50_ms']:.1f}x p50 ({s['p95_ms']:.2f} vs {s['p50_ms']:.2f} ms)"
            for variant, s in stats.items() if s["p50_ms"] > 0 and s["p95_ms"] > limit * s["p50_ms"]]
    return "; ".join(wide) + f" (> {limit:g}x)" if wide else None


def unstable_rows(rows: list[dict]) -> list[dict]:
    """The pruned row of every unstable cell (one per backend x tower x batch)."""
    return [r for r in rows if r.get("unstable") and r.get("variant") == "pruned"]


def cell_name(row: dict) -> str:
    """`ort-cpu vision batch 8`: how reports name a cell."""
    return f"{row['backend']} {row['tower']} batch {row['batch']}"


def _load(value: list[float] | None) -> str:
    return "unknown" if not value else f"{value[0]:.2f}"


def warning(rows: list[dict], meta: dict[str, Any]) -> str | None:
    """One line for the end of a run with unstable cells, or None when every cell is stable."""
    bad = unstable_rows(rows)
    if not bad:
        return None
    cells = sum(1 for r in rows if r.get("variant") == "pruned" and "throughput" in r)
    return (f"{len(bad)} of {cells} cells timed unstably (p95 > {SPREAD_LIMIT:g}x p50, marked {MARK} in bench.md; "
            f"load average {_load(meta.get('load_avg_start'))} at start, {_load(meta.get('load_avg_end'))} at end): "
            f"their pruned/dense ratios are not to be trusted; rerun on a quiet machine, with a longer --min-time "
            f"and --threads at most the idle cores (docs/guides/bench.md)")
