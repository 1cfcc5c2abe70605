"""Bench reports: bench.json (rows), bench.md (table with the pruned/dense ratio), bench.png.

Every file is written to a temporary name beside its target and renamed, so
a crash never leaves half a report. A report already there is kept: it is
renamed to `bench-<UTC time it was written>.{json,md,png}` before the new one
is written.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.io import atomic_file, write_json
from mfdeploy.artifacts.layout import BENCH_STEM, BENCH_SUFFIXES
from mfdeploy.bench.stability import MARK, SPREAD_LIMIT, cell_name, unstable_rows

RSS_NOTE = ("peak RSS: the process's resident-memory high-water mark (getrusage ru_maxrss) after the cell; "
            "it never decreases, so it covers every model loaded so far in the run, not one backend alone")


def write_rows(rows: list[dict], path: Path) -> Path:
    """Write the rows as a JSON list (atomically; values JSON has no type for are an error, not a string)."""
    return write_json(path, rows, default=None)


def pairs(rows: list[dict]) -> list[tuple[dict, dict | None]]:
    """(pruned row, matching dense row or None) per backend x tower x batch, in run order."""
    dense = {(r["backend"], r["tower"], r["batch"]): r
             for r in rows if r.get("variant") == "dense" and "throughput" in r}
    return [(r, dense.get((r["backend"], r["tower"], r["batch"])))
            for r in rows if r.get("variant") == "pruned" and "throughput" in r]


def int8_rows(rows: list[dict]) -> dict[tuple, dict]:
    """The int8 rows (a build's onnx_int8/, ONNX Runtime backends) by backend x tower x batch."""
    return {(r["backend"], r["tower"], r["batch"]): r for r in rows if r.get("variant") == "int8" and "throughput" in r}


def unavailable(rows: list[dict]) -> list[dict]:
    """The rows of backends (or variants) that could not run."""
    return [r for r in rows if r.get("status") == "unavailable"]


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _lat(r: dict | None) -> str:
    return "-" if r is None else f"{r['p50_ms']:.2f} / {r['p95_ms']:.2f} / {r['p99_ms']:.2f}"


HEADER = ["backend", "tower", "batch", "text len", "pruned items/s", "dense items/s", "pruned/dense",
          "pruned p50/p95/p99 ms", "dense p50/p95/p99 ms", "device", "precision", "peak RSS MiB"]


def precision_cell(p: dict, d: dict | None) -> str:
    """The precision that ran: the pruned row's, and the dense row's after it where they differ."""
    mine = p.get("precision") or "-"
    other = d.get("precision") if d else None
    return f"{mine} | {other}" if other and other != mine else mine


def ratio_cell(p: dict) -> str:
    """The pruned/dense ratio, marked when the cell's spread makes it untrustworthy."""
    ratio = "-" if p["pruned_over_dense"] is None else f"{p['pruned_over_dense']:.2f}x"
    return f"{ratio} {MARK}" if p.get("unstable") else ratio


INT8_HEADER = ["int8 items/s", "int8/dense", "ONNX MiB fp32 / int8", "int8 precision"]


def header(rows: list[dict]) -> list[str]:
    """The table's columns: the int8 ones only when the run timed int8 towers."""
    return HEADER + (INT8_HEADER if int8_rows(rows) else [])


def int8_cells(p: dict, q: dict | None) -> list[str]:
    """The int8 columns of a pruned row `p`: int8 throughput, int8/dense, ONNX sizes (`q`: its int8 row)."""
    if q is None:
        return ["-", "-", "-", "-"]
    ratio = "-" if q["over_dense"] is None else f"{q['over_dense']:.2f}x"
    return [fmt(q["throughput"]), ratio, f"{fmt(p.get('onnx_mb'))} / {fmt(q.get('onnx_mb'))}",
            q.get("precision") or "-"]


def table_rows(rows: list[dict]) -> list[list[str]]:
    """One line per backend x tower x batch: the variants and their throughput ratios to dense."""
    out, int8 = [], int8_rows(rows)
    for p, d in pairs(rows):
        line = [
            p["backend"], p["tower"], str(p["batch"]), fmt(p["text_len"], "d"), fmt(p["throughput"]),
            fmt(d["throughput"] if d else None), ratio_cell(p), _lat(p), _lat(d), p["device"], precision_cell(p, d),
            fmt((d or p)["peak_rss_mb"], ".0f"),
        ]
        if int8:
            line += int8_cells(p, int8.get((p["backend"], p["tower"], p["batch"])))
        out.append(line)
    return out


def _loads(meta: dict[str, Any]) -> str:
    def one(value: list[float] | None) -> str:
        return "unknown" if not value else " / ".join(f"{x:.2f}" for x in value)

    return (f"load average (1 / 5 / 15 min) at start {one(meta.get('load_avg_start'))}, "
            f"at end {one(meta.get('load_avg_end'))}")


def markdown(rows: list[dict], meta: dict[str, Any]) -> str:
    """The report as markdown: settings, the table, unavailable backends with reasons, notes."""
    lines = [
        "# mfdeploy bench",
        "",
        f"- build: `{meta.get('build_dir')}` (dense model: `{meta.get('model')}`)",
        f"- text length {meta.get('text_len')} tokens; CPU threads {meta.get('threads')}; "
        f"warm-up {meta.get('warmup')} calls; at least {meta.get('iters')} timed calls and "
        f"{meta.get('min_time')} s per variant and cell; pruned and dense calls interleaved",
        f"- {_loads(meta)}",
        "",
        "| " + " | ".join(header(rows)) + " |",
        "|" + "|".join("---:" if h not in ("backend", "tower", "device") else "---" for h in header(rows)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rows)]
    bad = unstable_rows(rows)
    if bad:
        lines += ["", f"{MARK} Unstable: p95 latency above {SPREAD_LIMIT:g}x p50 for a variant of the cell, so its "
                  "pruned/dense ratio is not to be trusted (a loaded machine; docs/guides/bench.md says how to get "
                  "stable numbers):", ""]
        lines += [f"- {cell_name(r)}: {r['unstable_reason']}" for r in bad]
    gone = unavailable(rows)
    if gone:
        lines += ["", "## Unavailable on this machine", ""]
        for r in gone:
            what = r["backend"] + (f" ({r['variant']})" if r.get("variant") else "")
            lines.append(f"- **{what}**: {r['reason']}")
    lines += ["", "Precision: what the tower's compute layers ran in, as the backend reports it (pruned | dense "
              "where they differ; int8+f32: integer matmuls, float elsewhere); a runner in less than fp32 ran "
              "only after matching the fp32 towers (bench.json: gate_min_cosine).",
              "", "Throughput: items (images or texts) per second at the median latency, batch / p50 (bench.json "
              "also has `mean_throughput`, items over total timed seconds); pruned/dense: the ratio of the two "
              "throughputs (> 1: the pruned model is faster)" + ("; int8/dense: the same for the build's "
              "onnx_int8/ towers, timed in turn with pruned and dense; ONNX MiB: the tower's graph on disk"
              if int8_rows(rows) else "") + ".", "", RSS_NOTE + ".", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Throughput vs batch size, one line per backend x tower x variant (one panel per tower)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    measured = [r for r in rows if "throughput" in r]
    towers = list(dict.fromkeys(r["tower"] for r in measured)) or ["vision"]
    backends = list(dict.fromkeys(r["backend"] for r in measured))
    colors = {b: f"C{i}" for i, b in enumerate(backends)}
    fig, axes = plt.subplots(1, len(towers), figsize=(6 * len(towers), 4.5), squeeze=False)
    for ax, tower in zip(axes[0], towers, strict=True):
        for backend in backends:
            for variant, style, marker in (("pruned", "-", "o"), ("dense", "--", "s"), ("int8", ":", "^")):
                pts = sorted((r["batch"], r["throughput"]) for r in measured
                             if (r["backend"], r["tower"], r["variant"]) == (backend, tower, variant))
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, style, marker=marker, fillstyle="none" if variant == "dense" else "full",
                            color=colors[backend], label=f"{backend} {variant}")
        ax.set_xscale("log", base=2)
        batches = sorted({r["batch"] for r in measured if r["tower"] == tower})
        if batches:
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"{'images' if tower == 'vision' else 'texts'} / s")
        ax.set_title(f"{tower} tower")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()

    def save(p: Path) -> None:
        fig.savefig(p, format="png", dpi=110)

    try:
        return atomic_file(path, save)
    finally:
        plt.close(fig)


def keep_previous(out_dir: Path) -> list[Path]:
    """Rename an existing bench.json/.md/.png to bench-<UTC time of the old report>.*; return the new paths.

    The time is the old bench.json's modification time (else the first file
    found), so the name says when that report was written. Each rename is
    atomic; a name already taken gets a -2, -3, ... suffix.
    """
    old = [p for p in (out_dir / f"{BENCH_STEM}{suffix}" for suffix in BENCH_SUFFIXES) if p.is_file()]
    if not old:
        return []
    stamp = datetime.fromtimestamp(old[0].stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem, n = f"{BENCH_STEM}-{stamp}", 1
    while any((out_dir / f"{stem}{suffix}").exists() for suffix in BENCH_SUFFIXES):
        n += 1
        stem = f"{BENCH_STEM}-{stamp}-{n}"
    kept = []
    for path in old:
        target = out_dir / f"{stem}{path.suffix}"
        os.replace(path, target)
        kept.append(target)
    return kept


def write_reports(rows: list[dict], out_dir: Path, meta: dict[str, Any],
                  json_path: str | Path | None = None) -> dict[str, Any]:
    """Write bench.json, bench.md and bench.png into `out_dir` (and the JSON to `json_path` too).

    A previous report there is kept under a timestamped name (`keep_previous`),
    listed under `"previous"` in the returned paths.
    """
    from mfdeploy.artifacts.tempdirs import owned_tempdir

    out_dir = Path(out_dir)
    # the new files first, beside the old ones: a full disk or a kill leaves the previous report where it was
    with owned_tempdir(f".{BENCH_STEM}.tmp-", out_dir) as tmp:
        write_rows(rows, tmp / f"{BENCH_STEM}.json")
        (tmp / f"{BENCH_STEM}.md").write_text(markdown(rows, meta))
        plot(rows, tmp / f"{BENCH_STEM}.png")
        previous = keep_previous(out_dir)
        paths: dict[str, Any] = {}
        for key, suffix in (("json", ".json"), ("md", ".md"), ("png", ".png")):
            paths[key] = out_dir / f"{BENCH_STEM}{suffix}"
            os.replace(tmp / paths[key].name, paths[key])
    if json_path is not None:
        paths["json_copy"] = write_rows(rows, Path(json_path))
    paths["previous"] = previous
    return paths
