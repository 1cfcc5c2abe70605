"""Show and save evaluation results: a rich table, and JSON written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.table import Table

from mfdeploy.errors import UserError
from mfdeploy.io import atomic_file


def _fmt(value: float | None, percent: bool = True) -> str:
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
        cells = [label, _fmt(result[section][name])]
        if dense is not None:
            cells += [_fmt((dense.get(section) or {}).get(name)), _fmt(ret.get(section, {}).get(name))]
        table.add_row(*cells)

    for name in result.get("tasks", {}):
        row(name, "tasks", name)
    if dense is not None and result.get("tasks"):
        table.add_row("mean task retention", "", "", _fmt(ret.get("mean_task_retention")), end_section=True)
    for name in result.get("retrieval", {}):
        row(name.replace("_r", " R@"), "retrieval", name)
    if dense is not None:
        table.add_row("mean retention (all)", "", "", _fmt(ret.get("mean_retention")))
    return table


def check_json_target(path: str | Path) -> Path:
    """Fail early (before a long evaluation) when a result cannot be written to `path`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"--json {path}: is a directory (give a file name)")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"--json {path}: cannot write in {parent}")
    return path


def write_json(result: dict, path: str | Path) -> Path:
    """Write a result as indented JSON, atomically (a temporary file in the same folder, then a rename)."""
    path = check_json_target(path)
    atomic_file(path, lambda p: p.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n",
                                             encoding="utf-8"))
    return path
