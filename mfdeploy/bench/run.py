"""`run_bench`: throughput and latency per backend x tower x batch size, pruned and dense side by side.

Pruned and dense are timed in the same cell, one call each in alternating
order (pruned, dense, dense, pruned, ...), so drift and noise from other
processes hit both alike and their ratio stays meaningful on a busy machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy.artifacts.guards import check_file_sources
from mfdeploy.artifacts.layout import BENCH_JSON, ONNX_INT8_DIR
from mfdeploy.artifacts.writable import check_file_target, check_writable
from mfdeploy.bench.args import (
    check_activation_memory,
    check_args,
    check_input_memory,
    parse_batch_sizes,
    parse_list,
    tower_shapes,
)
from mfdeploy.bench.runners import check_precision_options, open_runners, precision_fields
from mfdeploy.bench.stability import load_average, spread_reason
from mfdeploy.bench.timing import time_interleaved
from mfdeploy.errors import UserError
from mfdeploy.platform import available_memory_bytes, current_rss_mb, peak_rss_mb, physical_cores
from mfdeploy.runtime.base import Runner
from mfdeploy.runtime.inputs import DEFAULT_TEXT_LEN, pixel_values, text_inputs
from mfdeploy.runtime.registry import BACKENDS, ONNX_BACKENDS, TOWERS, BuildDir, check_backends

# on_progress(description, cells done, cells in all): how a caller shows the run (the CLI draws a bar)
Progress = Callable[[str, int, int], None]

__all__ = ["latency_stats", "parse_batch_sizes", "parse_list", "run_bench", "time_cell", "time_interleaved"]
DEFAULT_BATCH_SIZES = (1, 8, 32)


def latency_stats(latencies: np.ndarray, batch: int) -> dict[str, float]:
    """Throughput and p50/p95/p99 latency of one variant's calls (seconds each) at `batch` items per call."""
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
    on_progress: Progress | None = None,
    on_written: Callable[[dict[str, Any]], None] | None = None,
    precision: str | None = None,
    dtype: str | None = None,
    compile: bool = False,
    cuda_graphs: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark a build's backends, pruned against dense, and write the reports.

    Args:
        build_dir: a `mfdeploy build` output directory.
        backends: backend names (default: all of `BACKENDS`; those that cannot
            run here become "unavailable" rows with the reason).
        towers: "vision" and/or "text".
        batch_sizes: batch sizes to time.
        text_len: tokens per text (default 16, capped at the model's maximum; a fixed-length family: its length).
        warmup: untimed calls per variant and cell.
        iters: minimum timed calls per variant and cell.
        threads: CPU threads for torch and ONNX Runtime (default: physical cores).
        dense: also time the dense model, interleaved with the pruned one.
        int8: also time the build's `onnx_int8/` with the ONNX Runtime backends (None: when the
            build has one; True without one: an "unavailable" row).
        min_time: minimum timed seconds per variant and cell (more calls if needed).
        json_path: also write the JSON rows here.
        write: write bench.json, bench.md and bench.png into the build directory.
        on_progress: called as the run goes, with what it does, the cells done and the cells in all.
        on_written: called with `report.write_reports`'s paths once the
            reports are written (`"previous"`: where the last report was moved).
        precision: OpenVINO's inference precision, auto | f32 | bf16 | f16 (None: auto).
        dtype: the torch backend's, float32 | bfloat16 (None: float32). A reduced precision is gated against
            the fp32 towers first (`mfdeploy.runtime.gate`); a refused variant becomes an "unavailable" row.
        compile: the torch backends' towers through `torch.compile`, compiled before timing (rows say so in
            `compiled`).
        cuda_graphs: the torch-cuda backends' towers replayed from CUDA graphs (rows say so in `cuda_graphs`).

    Returns:
        Measurement rows `{backend, tower, variant, batch, text_len, throughput
        (items/s at the median latency), mean_throughput (items over total
        timed seconds), p50_ms, p95_ms, p99_ms, iters, pruned_over_dense
        (throughput ratio), over_dense (this variant's ratio to dense), onnx_mb (the tower's ONNX
        file(s) on disk, ONNX Runtime backends), device, threads, peak_rss_mb, rss_mb, unstable
        (p95 > 2x p50 for a variant of the cell; then also unstable_reason), precision (what the tower's
        compute ran in, as the backend reports it), gate_min_cosine (against the fp32 towers, where gated),
        load_avg_start, load_avg_end (`os.getloadavg()` around the cell)}`, and
        `{backend, variant (when only one variant failed), status: "unavailable", reason}` rows.

    Raises:
        UserError: a bad build directory or argument, or no requested backend could run while a report was
            to be written (then nothing is written).
    """
    import torch

    from mfdeploy.bench import report

    names = check_backends(list(backends) if backends else list(BACKENDS))
    towers = list(dict.fromkeys(towers))
    batch_sizes = [int(b) for b in batch_sizes]
    threads_used = threads or physical_cores()
    torch_threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    check_args(towers, batch_sizes, text_len, None, warmup, iters, threads, min_time)
    check_precision_options(names, precision, dtype, compile)
    if write and Path(build_dir).is_dir():  # where the reports go must take them: found now, not after the timing
        check_writable(Path(build_dir), Path(build_dir) / BENCH_JSON)
    if json_path is not None:
        check_file_target(Path(json_path))
        check_file_sources(Path(json_path), [build_dir])  # --json BUILD/build.json overwrote the build's manifest
    load_start = load_average()
    with BuildDir(build_dir) as build:
        adapter = build.adapter("pruned")  # image size, tokenizer, text limit
        check_args(towers, batch_sizes, text_len, adapter.max_text_len, warmup, iters, threads, min_time)
        fixed = adapter.fixed_text_len  # a family that reads one text length (SigLIP) is timed at it
        if fixed is not None and text_len not in (None, fixed):
            raise UserError(f"--text-len {text_len}: {adapter.family.title} reads exactly {fixed} tokens (every "
                            "text is padded to that length); leave --text-len out")
        length = fixed or text_len or min(DEFAULT_TEXT_LEN, adapter.max_text_len)
        available = available_memory_bytes()
        check_input_memory(batch_sizes, towers, adapter.image_size, length, available)
        check_activation_memory(batch_sizes, towers, tower_shapes(adapter.model.config, adapter.image_size, length),
                                available)
        images = {b: pixel_values(b, adapter.image_size, seed=b) for b in batch_sizes if "vision" in towers}  # timed
        texts = {b: text_inputs(b, length, tokenizer=adapter.tokenizer) for b in batch_sizes if "text" in towers}
        variants = ["pruned", "dense"] if dense else ["pruned"]
        with_int8 = (build.path / ONNX_INT8_DIR).is_dir() if int8 is None else int8
        torch.set_num_threads(threads_used)
        say = on_progress or (lambda _what, _done, _total: None)
        total, done = len(names) * len(towers) * len(batch_sizes), 0
        try:
            for name in names:
                say(f"{name}: loading", done, total)
                ort = name in ONNX_BACKENDS  # the ONNX graphs: the build's int8 ones too
                runners = open_runners(build, name, variants + (["int8"] if with_int8 and ort else []), towers,
                                       threads_used, max(batch_sizes), length, rows, precision, dtype, compile,
                                       cuda_graphs)
                sizes = {(v, t): _onnx_mb(build, v, t) for v in runners for t in towers} if ort else {}
                try:
                    for tower in towers:
                        for batch in batch_sizes:
                            if runners:
                                say(f"{name} {tower} batch {batch}", done, total)
                                rows.extend(time_cell(runners, name, tower, batch, length, images, texts, warmup, iters,
                                                  min_time, threads_used, sizes))
                            done += 1
                            say(f"{name} {tower} batch {batch}", done, total)
                finally:
                    for runner in runners.values():
                        runner.close()
        finally:
            torch.set_num_threads(torch_threads)
        meta = {**bench_meta(build, towers, batch_sizes, length, threads_used, warmup, iters, min_time, dense,
                             load_start), "int8": with_int8}
    if not any("throughput" in r for r in rows) and (write or json_path is not None):
        # nothing measured: no report replaces an earlier one (a caller writing nothing gets the rows and reasons)
        reasons = "; ".join(f"{r['backend']}: {r['reason']}" for r in rows if r.get("status") == "unavailable")
        raise UserError(f"no requested backend can run on this machine ({reasons}); nothing was written")
    try:
        if write:
            written = report.write_reports(rows, build.path, meta, json_path=json_path)
            if on_written is not None:
                on_written(written)
        elif json_path is not None:
            report.write_rows(rows, Path(json_path))
    except OSError as e:
        raise UserError(f"cannot write the bench report: {e}") from None
    return rows


def bench_meta(build: BuildDir, towers: list[str], batch_sizes: list[int], length: int, threads: int, warmup: int,
               iters: int, min_time: float, dense: bool, load_start: list[float] | None) -> dict[str, Any]:
    """The settings of a run, for the reports' header."""
    return {
        "build_dir": str(build.path),
        "model": build.model,
        "towers": towers,
        "batch_sizes": batch_sizes,
        "text_len": length,
        "threads": threads,
        "warmup": warmup,
        "iters": iters,
        "min_time": min_time,
        "dense": dense,
        "load_avg_start": load_start,
        "load_avg_end": load_average(),
    }


def _onnx_mb(build: BuildDir, variant: str, tower: str) -> float | None:
    """Size on disk of a variant's tower ONNX (with its external data), MiB."""
    folder = build.onnx_dir(variant)
    files = [f for f in folder.glob(f"{tower}.onnx*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 2) if files else None


def time_cell(runners: dict[str, Runner], name: str, tower: str, batch: int, text_len: int, images: dict, texts: dict,
          warmup: int, iters: int, min_time: float, threads: int,
          sizes: dict[tuple[str, str], float | None] | None = None) -> list[dict[str, Any]]:
    """One cell: every runner (variant name -> runner; "pruned" and "dense" give the ratio) on one tower at one
    batch, interleaved; one row per variant (see `run_bench`'s rows)."""
    calls: dict[str, Callable[[], Any]]
    if tower == "vision":
        calls = {v: partial(r.embed_images, images[batch]) for v, r in runners.items()}
    else:
        ids, mask = texts[batch]
        calls = {v: partial(r.embed_texts, ids, mask) for v, r in runners.items()}
    load_start = load_average()
    latencies = time_interleaved(calls, warmup, iters, min_time, {v: r.time_call for v, r in runners.items()})
    load_end = load_average()
    stats = {v: latency_stats(lat, batch) for v, lat in latencies.items()}
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
            **precision_fields(runners[variant], tower),
            "timing": runners[variant].timing,
            "threads": threads if runners[variant].device == "cpu" else None,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_mb": round(current_rss_mb(), 1),
            "unstable": unstable is not None,
            **({"unstable_reason": unstable} if unstable else {}),
            "load_avg_start": load_start,
            "load_avg_end": load_end,
        })
    return out
