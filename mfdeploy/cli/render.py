"""Everything the command line draws with rich: consoles, tables, the progress bar. No library logic here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

# Console markup is off: what is printed holds paths, model ids and messages with brackets (`mfdeploy[modelopt]`,
# `a[0]`) that rich would read as tags and drop. Styles are given as data instead (`labelled`, `style=`).
out = Console(markup=False)
err = Console(stderr=True, markup=False)


class _Plain(TypedDict):
    highlight: bool
    soft_wrap: bool
    markup: bool


PLAIN: _Plain = {"highlight": False, "soft_wrap": True, "markup": False}  # a line a user may paste


def wide_console() -> Console:
    """stdout; when piped or captured, wide enough not to squash a table's columns to 80."""
    console = Console(markup=False)
    return console if console.is_terminal else Console(width=220, markup=False)


def labelled(label: str, style: str, message: str) -> Text:
    """`label message` with the label styled and the message taken literally (never read as rich markup)."""
    return Text.assemble((label, style), " ", message)


def error(message: str) -> None:
    """`error: MESSAGE` on stderr, on one line however long."""
    err.print(labelled("error:", "bold red", message), highlight=False, soft_wrap=True)


def warning(message: str) -> None:
    """`warning: MESSAGE` on stderr, on one line however long."""
    err.print(labelled("warning:", "yellow", message), highlight=False, soft_wrap=True)


def status_text(message: str) -> Text:
    """A spinner's text: rich reads a plain string there as markup whatever the console says."""
    return Text(message)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A transient progress bar on stderr; yields `update(description, done, total)`. Off when stderr is not a
    terminal: rich would draw nothing there but end with an empty line (before an `error:` line, say)."""
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err, transient=True, disable=not (enabled and err.is_terminal))
    task = bar.add_task("", total=None)

    def update(description: str, done: int, total: int) -> None:
        bar.update(task, description=description, completed=done, total=total)

    with bar:
        yield update


# --- info -------------------------------------------------------------------------------------------------------
def info_table(title: str, rows: list[tuple[str, int, int, int]]) -> Table:
    """Per tower: parameters, prunable layers, prunable weights."""
    table = Table(title=title, show_header=True)
    table.add_column("tower")
    table.add_column("parameters", justify="right")
    table.add_column("prunable layers", justify="right")
    table.add_column("prunable weights", justify="right")
    for tower, n_params, n_layers, n_prunable in rows:
        table.add_row(tower, f"{n_params:,}", str(n_layers), f"{n_prunable:,}")
    return table


# --- eval ---------------------------------------------------------------------------------------------------------
def _pct(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def result_title(result: dict) -> str:
    """The evaluated model: its id, and for a pruned one `pruned METHOD RATIO PATTERN from ID`."""
    model = result.get("model", "")
    pruned = result.get("pruned")
    if not pruned:
        return str(model)
    return (f"pruned {pruned.get('method')} {pruned.get('ratio')} {pruned.get('pattern') or 'unstructured'} "
            f"from {model}")


def results_table(result: dict) -> Table:
    """One row per task and retrieval metric: the score, and the dense score and retention when known.

    Args:
        result: from `evaluate_model` or `evaluate_with_retention`.
    """
    dense = result.get("dense")
    ret = result.get("retention") or {}
    table = Table(title=f"{result_title(result)} ({result.get('backend', '')})", show_header=True)
    table.add_column("task")
    table.add_column("accuracy / recall", justify="right")
    if dense is not None:
        table.add_column("dense", justify="right")
        table.add_column("retention", justify="right")

    def row(label: str, section: str, name: str) -> None:
        cells = [label, _pct(result[section][name])]
        if dense is not None:
            cells += [_pct((dense.get(section) or {}).get(name)), _pct(ret.get(section, {}).get(name))]
        table.add_row(*cells)

    for name in result.get("tasks", {}):
        row(name, "tasks", name)
    if dense is not None and result.get("tasks"):
        table.add_row("mean task retention", "", "", _pct(ret.get("mean_task_retention")), end_section=True)
    for name in result.get("retrieval", {}):
        row(name.replace("_r", " R@"), "retrieval", name)
    if dense is not None:
        table.add_row("mean retention (all)", "", "", _pct(ret.get("mean_retention")))
    return table


# --- bench --------------------------------------------------------------------------------------------------------
def bench_table(rows: list[dict], model: str | None) -> Table:
    """The bench table: p50/p95/p99 as `pruned | dense`, the ratio marked when its cell is unstable."""
    from mfdeploy.bench.report import INT8_HEADER, fmt, int8_cells, int8_rows, pairs, precision_cell, ratio_cell

    table = Table(title=f"mfdeploy bench: {model} (pruned vs dense)", box=box.SIMPLE_HEAD)
    header = ["backend", "tower", "batch", "len", "pruned/s", "dense/s", "pruned/dense", "p50 ms", "p95 ms",
              "p99 ms", "device", "precision", "peak RSS MiB"]
    int8 = int8_rows(rows)
    for h in header + (INT8_HEADER if int8 else []):
        table.add_column(h, justify="left" if h in ("backend", "tower", "device") else "right", no_wrap=True)
    for p, d in pairs(rows):
        lat = [f"{p[k]:.2f} | {d[k]:.2f}" if d else f"{p[k]:.2f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
        extra = int8_cells(p, int8.get((p["backend"], p["tower"], p["batch"]))) if int8 else []
        table.add_row(p["backend"], p["tower"], str(p["batch"]), fmt(p["text_len"], "d"), fmt(p["throughput"]),
                      fmt(d["throughput"] if d else None), ratio_cell(p), *lat, p["device"], precision_cell(p, d),
                      fmt((d or p)["peak_rss_mb"], ".0f"), *extra)
    return table


def print_bench(rows: list[dict], model: str | None) -> None:
    """The bench table, its legend and the unavailable backends with their reasons, on stdout."""
    from mfdeploy.bench.report import unavailable
    from mfdeploy.bench.stability import MARK, SPREAD_LIMIT, unstable_rows

    console = wide_console()
    console.print(bench_table(rows, model))
    console.print("latency columns: pruned | dense; peak RSS: process-wide high-water mark (ru_maxrss)"
                  + (f"; {MARK}: unstable cell, p95 > {SPREAD_LIMIT:g}x p50" if unstable_rows(rows) else ""),
                  style="dim", highlight=False)
    for r in unavailable(rows):
        what = r["backend"] + (f" ({r['variant']})" if r.get("variant") else "")
        console.print(labelled("unavailable", "yellow", f"{what}: {r['reason']}"), highlight=False, soft_wrap=True)


# --- build --------------------------------------------------------------------------------------------------------
def build_table(manifest: dict, where: Path) -> Table:
    """The summary printed at the end of a build: the report's rows, then the sizes of the main artifacts."""
    from mfdeploy.pipelines.report import artifact_sizes, summary_rows

    table = Table(title=f"mfdeploy build -> {where}")
    table.add_column("")
    table.add_column("")
    for k, v in [*summary_rows(manifest), *artifact_sizes(manifest)]:
        table.add_row(k, v)
    return table


class _RichReporter:
    """A `mfdeploy.progress.Reporter` drawing rich progress bars on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def task(self, description: str, total: int | None = None):
        task_id = self._progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            self._progress.advance(task_id, n)

        return advance


@contextmanager
def console_reporter(enabled: bool = True) -> Iterator[Any]:
    """Progress bars on stderr while the block runs (the prune stage's); `enabled=False`: nothing drawn.

    Where stderr is no terminal (CI logs, `nohup`, a pipe), plain lines instead (`LineReporter`): a bar
    redrawn in a log file is either lost or a wall of carriage returns.
    """
    from mfdeploy.progress import LineReporter, NullReporter

    if not enabled:
        yield NullReporter()
        return
    console = Console(stderr=True, markup=False)
    if not console.is_terminal:
        lines = LineReporter()
        yield lines
        lines.close()  # not after a failure: its one error line is the last word
        return
    prog = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)
    with prog:
        yield _RichReporter(prog)
