"""`run_bench`: throughput and latency per backend x tower x batch size, pruned and dense side by side.

Pruned and dense are timed in the same cell, one call each in alternating
order (pruned, dense, dense, pruned, ...), so drift and noise from other
processes hit both alike and their ratio stays meaningful on a busy machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy.errors import UserError
from mfdeploy.serve.base import BackendUnavailable, Runner
from mfdeploy.serve.inputs import DEFAULT_TEXT_LEN, pixel_values, text_inputs
from mfdeploy.serve.registry import BACKENDS, TOWERS, BuildDir, check_backends, make_runner
from mfdeploy.serve.stability import load_average, spread_reason
from mfdeploy.serve.system import current_rss_mb, peak_rss_mb, physical_cores

DEFAULT_BATCH_SIZES = (1, 8, 32)
MAX_ITERS = 10_000  # cap on timed iterations per cell when --min-time keeps asking for more


def parse_list(text: str, what: str, known: Sequence[str] | None = None) -> list[str]:
    """`"a,b"` -> `["a", "b"]`, checked against `known`.

    Raises:
        UserError: empty list or an unknown item.
    """
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UserError(f"--{what}: empty list")
    if known is not None:
        unknown = [t for t in items if t not in known]
        if unknown:
            raise UserError(f"--{what}: unknown {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return list(dict.fromkeys(items))


def parse_batch_sizes(text: str) -> list[int]:
    """`"1,8,32"` -> `[1, 8, 32]`.

    Raises:
        UserError: not a comma-separated list of positive integers.
    """
    sizes = []
    for item in parse_list(text, "batch-sizes"):
        try:
            value = int(item)
        except ValueError:
            raise UserError(f"--batch-sizes: {item!r} is not an integer (expected e.g. 1,8,32)") from None
        if value <= 0:
            raise UserError(f"--batch-sizes: batch size must be positive, got {value}")
        sizes.append(value)
    return sizes


def time_interleaved(
    calls: dict[str, Callable[[], Any]], warmup: int, iters: int, min_time: float = 0.0
) -> dict[str, np.ndarray]:
    """Latencies in seconds of each call, timed in alternating order.

    Args:
        calls: variant name -> a zero-argument function doing one inference.
        warmup: untimed rounds first (first-call allocations, lazy kernels, engine builds).
        iters: at least this many timed rounds.
        min_time: and keep going until each call has run at least this many
            seconds in total (bounded by `MAX_ITERS`).
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    order = list(calls)
    lat: dict[str, list[float]] = {name: [] for name in order}
    spent = dict.fromkeys(order, 0.0)
    i = 0
    while i < iters or (min(spent.values()) < min_time and i < MAX_ITERS):
        for name in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            calls[name]()
            dt = time.perf_counter() - t0
            lat[name].append(dt)
            spent[name] += dt
        i += 1
    return {name: np.asarray(v) for name, v in lat.items()}


def _stats(latencies: np.ndarray, batch: int) -> dict[str, float]:
    ms = latencies * 1e3
    return {
        # at the median call: robust to the stalls other processes cause on a shared machine
        "throughput": float(batch / np.median(latencies)),
        "mean_throughput": float(batch * len(latencies) / latencies.sum()),  # items / total timed seconds
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "iters": len(latencies),
    }


def _check_args(towers, batch_sizes, text_len, max_text_len, warmup, iters, threads, min_time) -> None:
    unknown = [t for t in towers if t not in TOWERS]
    if unknown or not towers:
        what = ", ".join(map(repr, unknown)) or "empty list"
        raise UserError(f"--towers: unknown {what}; known: {', '.join(TOWERS)}")
    if not batch_sizes or any(int(b) <= 0 for b in batch_sizes):
        raise UserError(f"--batch-sizes: batch sizes must be positive integers, got {list(batch_sizes)}")
    if text_len is not None and (text_len < 1 or (max_text_len is not None and text_len > max_text_len)):
        limit = f"the model's maximum {max_text_len}" if max_text_len is not None else "the model's maximum"
        raise UserError(f"--text-len: must be between 1 and {limit}, got {text_len}")
    if warmup < 0:
        raise UserError(f"--warmup: must be >= 0, got {warmup}")
    if iters < 1:
        raise UserError(f"--iters: must be >= 1, got {iters}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads: must be >= 1, got {threads}")
    if min_time < 0:
        raise UserError(f"--min-time: must be >= 0, got {min_time}")


def run_bench(
    build_dir: str | Path,
    backends: Sequence[str] | None = None,
    towers: Sequence[str] = TOWERS,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    text_len: int | None = None,
    warmup: int = 3,
    iters: int = 20,
    threads: int | None = None,
    dense: bool = True,
    int8: bool | None = None,
    *,
    min_time: float = 0.5,
    json_path: str | Path | None = None,
    write: bool = True,
    show: bool = True,
    progress: bool = True,
    on_written: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark a build's backends, pruned against dense, and write the reports.

    Args:
        build_dir: a `mfdeploy build` output directory.
        backends: backend names (default: all of `BACKENDS`; those that cannot
            run here become "unavailable" rows with the reason).
        towers: "vision" and/or "text".
        batch_sizes: batch sizes to time.
        text_len: tokens per text (default 16, capped at the model's maximum).
        warmup: untimed calls per variant and cell.
        iters: minimum timed calls per variant and cell.
        threads: CPU threads for torch and ONNX Runtime (default: physical cores).
        dense: also time the dense model, interleaved with the pruned one.
        int8: also time the build's `onnx_int8/` with the ONNX Runtime backends (None: when the
            build has one; True without one: an "unavailable" row).
        min_time: minimum timed seconds per variant and cell (more calls if needed).
        json_path: also write the JSON rows here.
        write: write bench.json, bench.md and bench.png into the build directory.
        show: print the table (rich) to stdout.
        progress: show a progress bar on stderr.
        on_written: called with `report.write_reports`'s paths once the
            reports are written (`"previous"`: where the last report was moved).

    Returns:
        Measurement rows `{backend, tower, variant, batch, text_len, throughput
        (items/s at the median latency), mean_throughput (items over total
        timed seconds), p50_ms, p95_ms, p99_ms, iters, pruned_over_dense
        (throughput ratio), over_dense (this variant's ratio to dense), onnx_mb (the tower's ONNX
        file(s) on disk, ONNX Runtime backends), device, threads, peak_rss_mb, rss_mb, unstable
        (p95 > 2x p50 for a variant of the cell; then also unstable_reason),
        load_avg_start, load_avg_end (`os.getloadavg()` around the cell)}`, and
        `{backend, variant (when only one variant failed), status: "unavailable", reason}` rows.

    Raises:
        UserError: a bad build directory or argument.
    """
    import torch

    from mfdeploy.serve import report

    names = check_backends(list(backends) if backends else list(BACKENDS))
    towers = list(dict.fromkeys(towers))
    batch_sizes = [int(b) for b in batch_sizes]
    threads_used = threads or physical_cores()
    torch_threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    _check_args(towers, batch_sizes, text_len, None, warmup, iters, threads, min_time)
    load_start = load_average()
    with BuildDir(build_dir) as build:
        adapter = build.adapter("pruned")  # image size, tokenizer, text limit
        _check_args(towers, batch_sizes, text_len, adapter.max_text_len, warmup, iters, threads, min_time)
        length = text_len or min(DEFAULT_TEXT_LEN, adapter.max_text_len)
        images = {b: pixel_values(b, adapter.image_size, seed=b) for b in batch_sizes}
        texts = {b: text_inputs(b, length, tokenizer=adapter.tokenizer) for b in batch_sizes}
        variants = ["pruned", "dense"] if dense else ["pruned"]
        with_int8 = (build.path / "onnx_int8").is_dir() if int8 is None else int8
        torch.set_num_threads(threads_used)
        bar = report.progress_bar(enabled=progress)
        task = bar.add_task("bench", total=len(names) * len(towers) * len(batch_sizes))
        try:
            with bar:
                for name in names:
                    bar.update(task, description=f"{name}: loading")
                    ort = name.startswith("ort-")
                    runners = _open_runners(build, name, variants + (["int8"] if with_int8 and ort else []), towers,
                                            threads_used, max(batch_sizes), length, rows)
                    sizes = {(v, t): _onnx_mb(build, v, t) for v in runners for t in towers} if ort else {}
                    try:
                        for tower in towers:
                            for batch in batch_sizes:
                                if runners:
                                    bar.update(task, description=f"{name} {tower} batch {batch}")
                                    rows.extend(_cell(runners, name, tower, batch, length, images, texts, warmup, iters,
                                                      min_time, threads_used, sizes))
                                bar.advance(task)
                    finally:
                        for runner in runners.values():
                            runner.close()
        finally:
            torch.set_num_threads(torch_threads)
        meta = {
            "build_dir": str(build.path),
            "model": build.model,
            "towers": towers,
            "batch_sizes": batch_sizes,
            "text_len": length,
            "threads": threads_used,
            "warmup": warmup,
            "iters": iters,
            "min_time": min_time,
            "dense": dense,
            "int8": with_int8,
            "load_avg_start": load_start,
            "load_avg_end": load_average(),
        }
    try:
        if write:
            written = report.write_reports(rows, build.path, meta, json_path=json_path)
            if on_written is not None:
                on_written(written)
        elif json_path is not None:
            report.write_json(rows, Path(json_path))
    except OSError as e:
        raise UserError(f"cannot write the bench report: {e}") from None
    if show:
        report.print_table(rows, meta)
    return rows


def _open_runners(build: BuildDir, name: str, variants: list[str], towers: list[str], threads: int, max_batch: int,
                  text_len: int, rows: list[dict]) -> dict[str, Runner]:
    """Runners per variant; an unavailable variant becomes a row (never dropped silently)."""
    runners: dict[str, Runner] = {}
    for variant in variants:
        try:
            runners[variant] = make_runner(
                name, build, variant=variant, threads=threads, towers=towers, max_batch=max_batch,
                max_text_len=text_len,
                spin=len(variants) == 1,  # sessions taking turns must not spin against each other
            )
        except BackendUnavailable as e:
            if variant == "pruned":
                rows.append({"backend": name, "status": "unavailable", "reason": str(e)})
                break  # the dense variant would fail the same way
            rows.append({"backend": name, "variant": variant, "status": "unavailable", "reason": str(e)})
    return runners


def _onnx_mb(build: BuildDir, variant: str, tower: str) -> float | None:
    """Size on disk of a variant's tower ONNX (with its external data), MiB."""
    folder = build.onnx_dir(variant)
    files = [f for f in folder.glob(f"{tower}.onnx*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 2) if files else None


def _cell(runners: dict[str, Runner], name: str, tower: str, batch: int, text_len: int, images: dict, texts: dict,
          warmup: int, iters: int, min_time: float, threads: int,
          sizes: dict[tuple[str, str], float | None] | None = None) -> list[dict[str, Any]]:
    if tower == "vision":
        calls = {v: (lambda r=r: r.embed_images(images[batch])) for v, r in runners.items()}
    else:
        ids, mask = texts[batch]
        calls = {v: (lambda r=r: r.embed_texts(ids, mask)) for v, r in runners.items()}
    load_start = load_average()
    latencies = time_interleaved(calls, warmup, iters, min_time)
    load_end = load_average()
    stats = {v: _stats(lat, batch) for v, lat in latencies.items()}
    ratio = stats["pruned"]["throughput"] / stats["dense"]["throughput"] if "dense" in stats else None
    unstable = spread_reason(stats)  # flags the whole cell: its ratio is what a wide spread spoils
    out = []
    for variant, s in stats.items():
        out.append({
            "backend": name,
            "tower": tower,
            "variant": variant,
            "batch": batch,
            "text_len": text_len if tower == "text" else None,
            **s,
            "pruned_over_dense": ratio,
            "over_dense": s["throughput"] / stats["dense"]["throughput"] if "dense" in stats else None,
            "onnx_mb": (sizes or {}).get((variant, tower)),
            "device": runners[variant].device,
            "threads": threads if runners[variant].device == "cpu" else None,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_mb": round(current_rss_mb(), 1),
            "unstable": unstable is not None,
            **({"unstable_reason": unstable} if unstable else {}),
            "load_avg_start": load_start,
            "load_avg_end": load_end,
        })
    return out
