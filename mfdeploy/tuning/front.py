"""The Pareto front of a tune's trials (retention x speed-up), the constraints a trial breaks, and the pick.

Both objectives are maximised: `quality["retention"]` (mean over tasks of candidate / dense accuracy) and
`speed["speedup"]` (dense p50 / candidate p50). Only complete trials count; screened and failed ones never
reach the front nor the pick.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from mfdeploy.tuning.records import Constraints, Record


def _objectives(record: Record) -> tuple[float, float] | None:
    """(retention, speed-up) of a complete trial with both measured and finite, else None."""
    if record.get("state") != "complete":
        return None
    try:
        values = (float(record["quality"]["retention"]), float(record["speed"]["speedup"]))
    except (KeyError, TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _rank(record: Record) -> tuple[float, float, int]:
    """Sort key, best first: higher speed-up, then higher retention, then the earlier trial."""
    retention, speedup = _objectives(record) or (-math.inf, -math.inf)
    return (-speedup, -retention, record.get("number", 0))


def pareto_front(records: list[Record]) -> list[Record]:
    """The complete trials no other complete trial dominates, fastest first.

    Computed by Optuna (an in-memory two-objective study, `study.best_trials`). Trials with identical
    (retention, speed-up) are all on the front: neither dominates the other.

    Args:
        records: trial records (`mfdeploy.tuning.records`), any state.

    Returns:
        The front's records, by speed-up descending (ties: higher retention, then lower trial number).
    """
    import optuna

    candidates = [(i, r, v) for i, r in enumerate(records) if (v := _objectives(r)) is not None]
    if not candidates:
        return []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory" is noise here
    try:
        study = optuna.create_study(directions=["maximize", "maximize"])
        for index, record, values in candidates:
            # the position maps a trial back (keys are unique within a tune directory, positions always are)
            study.add_trial(optuna.trial.create_trial(
                values=list(values), params={}, distributions={},
                user_attrs={"key": record.get("key"), "index": index}))
        best = study.best_trials
    finally:
        optuna.logging.set_verbosity(verbosity)  # the search itself may log through Optuna
    return sorted((records[t.user_attrs["index"]] for t in best), key=_rank)


def _num(value: float, limit: float, digits: int) -> str:
    """`value` with enough decimals to differ from `limit` as printed (1.004 vs 1 -> 1.004, not 1.00)."""
    for d in range(digits, digits + 4):
        text = f"{value:.{d}f}"
        if float(text) != limit:
            return text
    return f"{value:.{digits}f}"


# constraint field -> (flag, the record's value, unit text, True when the value must stay below the limit)
_CHECKS: dict[str, tuple[str, Callable[[Record], object], str, bool]] = {
    "max_drop": ("--max-drop", lambda r: (r.get("quality") or {}).get("drop_points"), "drop {} points", True),
    "min_speedup": ("--min-speedup", lambda r: (r.get("speed") or {}).get("speedup"), "speed-up {}x", False),
    "max_latency_ms": ("--max-latency-ms", lambda r: (r.get("speed") or {}).get("latency_ms"), "latency {} ms",
                       True),
    "max_size_mb": ("--max-size-mb", lambda r: r.get("size_mb"), "size {} MiB", True),
}


def _violations(record: Record, constraints: Constraints) -> list[tuple[str, float]]:
    """(phrase, relative excess) per constraint `record` breaks; an unknown value breaks it infinitely."""
    out = []
    for field, (flag, get, unit, upper) in _CHECKS.items():
        limit = getattr(constraints, field)
        if limit is None:
            continue
        value = get(record)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            out.append((f"{unit.split()[0]} unknown ({flag} {limit:g})", math.inf))
            continue
        excess = value - limit if upper else limit - value
        if excess > 0:
            shown = _num(value, limit, 1 if field == "max_size_mb" else 2)
            # relative to the limit, so that points, ratios, ms and MB compare; a zero limit counts in its unit
            out.append((f"{unit.format(shown)} {'>' if upper else '<'} {flag} {limit:g}",
                        excess / abs(limit) if limit else excess))
    return out


def meets(record: Record, constraints: Constraints) -> list[str]:
    """The constraints a complete trial breaks, each a short phrase (`drop 1.40 points > --max-drop 1`).

    Args:
        record: a complete trial record.
        constraints: the bounds as given (`Constraints.effective()` is the caller's choice); None = unbounded.

    Returns:
        One phrase per broken constraint; empty when the trial meets them all. A bounded value the record
        lacks counts as broken (`size unknown (--max-size-mb 10)`).
    """
    return [phrase for phrase, _ in _violations(record, constraints)]


def _describe(record: Record) -> str:
    return f"#{record.get('number')} {record.get('key')}"


def _closest(complete: list[Record], limits: Constraints) -> tuple[Record, list[str]]:
    """The complete trial that breaks the fewest constraints, then by the least relative excess."""
    scored = [(r, _violations(r, limits)) for r in complete]
    best, broken = min(scored, key=lambda s: (len(s[1]), sum(x for _, x in s[1]), s[0].get("number", 0)))
    return best, [phrase for phrase, _ in broken]


def choose(records: list[Record], constraints: Constraints) -> tuple[Record | None, str]:
    """The trial to build: the fastest complete trial that meets `constraints.effective()`, and why.

    Ranked by speed-up, then retention, then the earlier trial. The pick is a point of the Pareto front
    whenever the trials that dominate it meet the constraints too; a bound the front does not see (size,
    latency, drop points where tasks weigh unlike retention) can rule out every trial that dominates the
    fastest one within, and the reason then says that the pick is off the front.

    Args:
        records: trial records, any state.
        constraints: the user's bounds; none given means `--max-drop 1`.

    Returns:
        (record, one-sentence reason), or (None, why nothing can be picked: the constraint(s) and the complete
        trial that came closest, or that no trial completed).
    """
    limits = constraints.effective()
    complete = [r for r in records if _objectives(r) is not None]
    if not complete:
        states = [r.get("state") for r in records]
        counts = ", ".join(f"{states.count(s)} {s}" for s in ("screened", "failed") if s in states)
        return None, "no trial completed" + (f" ({counts})" if counts else "") + ": there is nothing to pick"
    within = sorted((r for r in complete if not meets(r, limits)), key=_rank)
    if not within:
        closest, broken = _closest(complete, limits)
        return None, (f"no candidate meets {limits.describe()}: closest was {_describe(closest)} "
                      f"({'; '.join(broken)})")
    pick = within[0]
    on_front = any(r is pick for r in pareto_front(complete))
    retention, speedup = _objectives(pick) or (math.nan, math.nan)
    drop = (pick.get("quality") or {}).get("drop_points")
    numbers = f"{speedup:.2f}x, " + (f"drop {drop:.2f} points" if isinstance(drop, (int, float))
                                      else f"retention {100 * retention:.1f}%")
    if on_front:
        return pick, f"fastest point of the front within {limits.describe()} ({numbers})"
    return pick, (f"fastest trial within {limits.describe()} ({numbers}); it is off the front: the trials "
                  "that dominate it break the constraints")
