"""pareto.png: every complete trial as retention (%) vs speed-up over dense, the front, the pick, dense itself.

Drawn on a bare `matplotlib.figure.Figure` with the Agg canvas: no display, no pyplot state shared with
other plots of the process.
"""

from __future__ import annotations

import math
from typing import IO, Any

from mfdeploy.tuning.records import Record

# precision -> marker; a precision not listed gets the next of `_SPARE`
_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^", "fp8": "v", "int4": "P"}
_SPARE = ("X", "h", "<", ">", "p", "*")


def _point(record: Record) -> tuple[float, float] | None:
    """(retention %, speed-up) of a complete trial with both finite, else None."""
    try:
        x = 100 * float(record["quality"]["retention"])
        y = float(record["speed"]["speedup"])
    except (KeyError, TypeError, ValueError):
        return None
    return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def _screen_x(record: Record) -> float | None:
    value = (record.get("screen") or {}).get("retention")
    return 100 * value if isinstance(value, (int, float)) and math.isfinite(value) else None


def pareto_png(summary: dict[str, Any], out: IO[bytes]) -> None:
    """Draw the summary's trials, front and pick (`report.write_reports` summary) as a PNG into `out`.

    Colour: the pruning method; marker: the precision. Screened trials with a screen retention are small grey
    crosses along the bottom (or at their speed-up, where they have one). Works with no complete trial too.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    trials: list[Record] = summary.get("trials") or []
    done = [(r, p) for r in trials if r.get("state") == "complete" and (p := _point(r)) is not None]
    fig = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.axhline(1.0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(100.0, color="0.8", lw=0.8, zorder=0)

    methods = list(dict.fromkeys(str((r.get("config") or {}).get("method")) for r, _ in done))
    precisions = list(dict.fromkeys(str((r.get("config") or {}).get("precision")) for r, _ in done))
    spare = iter(_SPARE * (1 + len(precisions) // len(_SPARE)))
    marker = {p: _MARKERS.get(p) or next(spare) for p in precisions}
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for r, (x, y) in done:
        cfg = r.get("config") or {}
        ax.scatter([x], [y], s=45, marker=marker[str(cfg.get("precision"))], color=colour[str(cfg.get("method"))],
                   edgecolors="k", linewidths=0.4, zorder=3)

    handles = [Line2D([], [], ls="", marker="o", color=colour[m], label=m) for m in methods]
    handles += [Line2D([], [], ls="", marker=marker[p], color="0.4", label=p) for p in precisions]

    bottom = blended_transform_factory(ax.transData, ax.transAxes)
    screened = [(r, sx) for r in trials if r.get("state") == "screened" and (sx := _screen_x(r)) is not None]
    for r, sx in screened:
        speedup = (r.get("speed") or {}).get("speedup")
        if isinstance(speedup, (int, float)) and math.isfinite(speedup):
            ax.scatter([sx], [speedup], marker="x", s=18, color="0.6", zorder=2)
        else:
            ax.scatter([sx], [0.03], marker="x", s=18, color="0.6", zorder=2, transform=bottom)
            ax.update_datalim([(sx, 1.0)])  # a point placed in axes units is left out of the x autoscale
    if screened:
        handles.append(Line2D([], [], ls="", marker="x", color="0.6", label="screened (screen retention)"))

    numbers = set(summary.get("front") or [])
    front = sorted((p for r, p in done if r.get("number") in numbers), key=lambda p: (p[0], -p[1]))
    if front:
        xs, ys = zip(*front)
        # sorted by retention the front falls in speed-up: 'pre' draws the edge of the region it dominates
        ax.step(xs, ys, where="pre", color="k", lw=1.0, ls="--", zorder=1)
    if len(front) > 1:  # one point draws no line
        handles.append(Line2D([], [], color="k", lw=1.0, ls="--", label="Pareto front"))

    ax.scatter([100.0], [1.0], marker="*", s=160, color="k", zorder=4)
    ax.annotate("dense", (100.0, 1.0), xytext=(6, -12), textcoords="offset points", fontsize=8)
    handles.append(Line2D([], [], ls="", marker="*", markersize=10, color="k", label="dense (100%, 1.0x)"))

    ax.margins(0.08)
    pick = (summary.get("pick") or {}).get("number")
    picked = next(((r, p) for r, p in done if r.get("number") == pick), None)
    if picked is not None:
        (r, (x, y)) = picked
        ax.scatter([x], [y], s=320, facecolors="none", edgecolors="red", linewidths=1.8, zorder=5)
        ax.autoscale_view()
        # the label goes toward the middle of the plot, so that it is never cut off at an edge
        left = x > sum(ax.get_xlim()) / 2
        below = y > sum(ax.get_ylim()) / 2
        ax.annotate(f"pick #{pick} {r.get('key')}\n{x:.1f}%, {y:.2f}x", (x, y),
                    xytext=(-16 if left else 16, -22 if below else 16), textcoords="offset points",
                    ha="right" if left else "left", va="top" if below else "bottom", fontsize=8, color="red",
                    arrowprops={"arrowstyle": "-", "color": "red", "lw": 0.8})
        handles.append(Line2D([], [], ls="", marker="o", markersize=12, markerfacecolor="none",
                              markeredgecolor="red", label="pick"))
    if not done:
        ax.text(0.5, 0.5, "no complete trial", transform=ax.transAxes, ha="center", va="center", color="0.4")

    ax.set_xlabel("mean task retention (% of dense accuracy)")
    ax.set_ylabel("speed-up over dense (x)")
    ax.set_title(f"{summary.get('model')} on {summary.get('backend')}, batch {summary.get('batch_size')}: "
                 "quality vs speed", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=110)
