"""A tune's reports: tune.json (the whole summary), tune.md (the front, every trial, the pick), pareto.png.

All three are rendered in memory first, so a report that cannot be drawn writes nothing; each file is then
put in place through a temporary sibling and a rename (`artifacts.io.atomic_file`), never half-written.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.io import atomic_file
from mfdeploy.errors import is_number
from mfdeploy.tuning.plot import pareto_png
from mfdeploy.tuning.records import Record

TUNE_JSON, TUNE_MD, PARETO_PNG = "tune.json", "tune.md", "pareto.png"
NOTES = ("retention: the mean over tasks of candidate / dense accuracy; drop: points of mean accuracy below "
         "dense; speed-up: dense p50 / candidate p50, vision + text at the batch size, same backend, same run; "
         "latency: the candidate's p50, vision + text; size: the towers it serves, on disk.")


def _finite(data: Any) -> Any:
    """`data` with NaN and infinities as None: tune.json stays strict JSON that any reader parses."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def _f(value: Any, spec: str, suffix: str = "") -> str:
    ok = is_number(value) and math.isfinite(value)
    return format(value, spec) + suffix if ok else "-"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table with padded columns, so that it reads in a terminal as well as rendered."""
    rows = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)]


def _measures(r: Record) -> list[str]:
    q, s = r.get("quality") or {}, r.get("speed") or {}
    retention = q.get("retention")
    return [_f(q.get("value"), ".4f"), _f(q.get("drop_points"), ".2f"),
            _f(100 * retention if isinstance(retention, (int, float)) else None, ".1f", "%"),
            _f(s.get("speedup"), ".2f", "x"), _f(s.get("latency_ms"), ".2f"), _f(r.get("size_mb"), ".1f")]


MEASURES = ["mean acc", "drop pts", "retention", "speed-up", "latency ms", "size MiB"]


def _header(summary: dict) -> list[str]:
    evaluation = summary.get("eval")
    if isinstance(evaluation, dict):
        evaluation = ", ".join(f"{k} {v}" for k, v in evaluation.items())
    space = "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                      for k, v in (summary.get("space") or {}).items())
    dense = summary.get("dense") or {}
    dq, ds = dense.get("quality") or {}, dense.get("speed") or {}
    t = summary.get("time") or {}
    trials = summary.get("trials") or []
    states = [r.get("state") for r in trials]
    load = ", ".join(_f(x, ".2f") for x in summary.get("load_avg") or []) or "-"
    return [f"# mfdeploy tune: {summary.get('model')}", "",
            f"- backend: {summary.get('backend')}, batch size {summary.get('batch_size')}",
            f"- evaluation: {evaluation or '-'}",
            f"- dense: mean accuracy {_f(dq.get('value'), '.4f')}, latency {_f(ds.get('latency_ms'), '.2f')} ms",
            f"- constraints: {summary.get('constraints') or 'none'}",
            f"- search space: {space or '-'}",
            f"- trials: {len(trials)} ({', '.join(f'{states.count(s)} {s}' for s in dict.fromkeys(states)) or '-'})",
            f"- time: {_f(t.get('spent_s'), '.0f')} s of {_f(t.get('budget_s'), '.0f')} s budget; "
            f"stopped: {t.get('stopped') or '-'}",
            f"- load average (1, 5, 15 min): {load}", ""]


def markdown(summary: dict) -> str:
    """tune.md: the run, the Pareto front (pick marked), every trial with its state or reason, the pick."""
    trials = sorted(summary.get("trials") or [], key=lambda r: r.get("number", 0))
    by_number = {r.get("number"): r for r in trials}
    front = [by_number[n] for n in summary.get("front") or [] if n in by_number]
    on_front = {r.get("number") for r in front}
    pick = (summary.get("pick") or {}).get("number")
    lines = _header(summary)
    lines += ["## Pareto front (retention vs speed-up)", ""]
    if front:
        lines += table(["#", "configuration", *MEASURES, "pick"],
                       [[str(r.get("number")), str(r.get("key")), *_measures(r),
                         "yes" if r.get("number") == pick else ""] for r in front])
    else:
        lines.append("No trial completed: there is no front.")
    lines += ["", "## All trials", ""]
    rows = []
    for r in trials:
        notes = [r.get("reason") or ""] if r.get("state") != "complete" else []
        notes += ["front"] * (r.get("number") in on_front) + ["pick"] * (r.get("number") == pick)
        shared = (r.get("speed") or {}).get("shared_with")
        notes += [f"timing of {shared}"] * bool(shared)
        rows.append([str(r.get("number")), str(r.get("key")), str(r.get("state")), *_measures(r),
                     "; ".join(n for n in notes if n)])
    lines += table(["#", "configuration", "state", *MEASURES, "note"], rows) if rows else ["No trial ran."]
    why = (summary.get("pick") or {}).get("why") or ""
    serve = (summary.get("pick") or {}).get("serve")
    chosen = by_number.get(pick)
    lines += ["", "## Pick", "",
              f"#{pick} {chosen.get('key')}: {why}" if chosen is not None else f"No pick: {why}"]
    lines += ["", "Serve it as it was measured:", "", f"    {serve}"] if chosen is not None and serve else []
    lines += ["", NOTES, ""]
    return "\n".join(lines)


def write_reports(out_dir: Path, summary: dict) -> dict[str, Path]:
    """Write tune.json, tune.md and pareto.png into `out_dir` (made if missing).

    Args:
        out_dir: the tune directory.
        summary: model, backend, batch_size, eval, constraints, space, dense, trials, front (trial numbers),
            pick ({"number", "why"}), time ({"budget_s", "spent_s", "stopped"}), load_avg.

    Returns:
        {"json": path, "md": path, "png": path}.

    Raises:
        WriteError: a file could not be written (one line naming it); no temporary file is left, and the
            files already written by this call are whole (the JSON goes last).
    """
    out_dir = Path(out_dir)
    text = json.dumps(_finite(summary), indent=2, default=str, allow_nan=False) + "\n"
    md = markdown(summary)
    buf = io.BytesIO()
    pareto_png(summary, buf)
    png = buf.getvalue()
    return {"png": atomic_file(out_dir / PARETO_PNG, lambda p: p.write_bytes(png)),
            "md": atomic_file(out_dir / TUNE_MD, lambda p: p.write_text(md, encoding="utf-8")),
            "json": atomic_file(out_dir / TUNE_JSON, lambda p: p.write_text(text, encoding="utf-8"))}
