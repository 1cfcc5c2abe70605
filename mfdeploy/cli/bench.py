"""`mfdeploy bench`: throughput and latency of a build's backends, pruned vs dense."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mfdeploy.cli.options import CompileOpt, CudaGraphsOpt, PrecisionOpt, RunDtypeOpt
from mfdeploy.cli.render import err, print_bench, progress_bar
from mfdeploy.cli.render import warning as show_warning
from mfdeploy.cli.root import app


@app.command()
def bench(
    build_dir: Annotated[Path, typer.Argument(help="A `mfdeploy build --out` directory.")],
    backends: Annotated[str | None, typer.Option(
        help="Comma-separated: torch, torch-cuda, torch-cuda-sparse, ort-cpu, ort-cuda, ort-trt, trt, openvino "
             "(default: all; "
             "those that cannot run "
             "here are listed as unavailable, with the reason).")] = None,
    towers: Annotated[str, typer.Option(help="Comma-separated: vision, text.")] = "vision,text",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated positive batch sizes.")] = "1,8,32",
    text_len: Annotated[int | None, typer.Option(
        help="Tokens per text (default 16, capped at the model's maximum; SigLIP reads one length, its own).")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed calls per variant before timing each cell.")] = 3,
    iters: Annotated[int, typer.Option(help="Minimum timed calls per variant and cell.")] = 20,
    min_time: Annotated[float, typer.Option(
        help="Minimum timed seconds per variant and cell (longer: steadier numbers).")] = 0.5,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for torch, ONNX Runtime and OpenVINO (default: physical cores).")] = None,
    dense: Annotated[bool, typer.Option(
        "--dense/--no-dense", help="Also time the dense model, interleaved with the pruned one.")] = True,
    int8: Annotated[bool | None, typer.Option(
        "--int8/--no-int8", help="Also time the build's onnx_int8/ towers (ONNX Runtime, OpenVINO), in turn with "
                                 "pruned and dense (default: when the build has them).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the JSON rows here.")] = None,
    precision: PrecisionOpt = None,
    dtype: RunDtypeOpt = None,
    compile: CompileOpt = False,
    cuda_graphs: CudaGraphsOpt = True,
) -> None:
    """Throughput and latency of every backend, pruned vs dense; writes bench.json/.md/.png into BUILD_DIR.

    An earlier report there is kept, renamed bench-<UTC time it was written>.json/.md/.png. Cells whose p95 latency
    exceeds 2x p50 are flagged as unstable (a busy machine): see docs/guides/bench.md (Stable numbers) for
    steadier ones.
    """
    from mfdeploy.artifacts.layout import BENCH_STEM
    from mfdeploy.artifacts.manifest import BuildManifest
    from mfdeploy.bench import load_average, parse_batch_sizes, parse_list, run_bench, warning
    from mfdeploy.bench.args import check_args
    from mfdeploy.runtime import BACKENDS, TOWERS

    names = parse_list(backends, "backends", list(BACKENDS)) if backends is not None else None
    tower_names, sizes = parse_list(towers, "towers", list(TOWERS)), parse_batch_sizes(batch_sizes)  # before the bar
    check_args(tower_names, sizes, text_len, None, warmup, iters, threads, min_time)  # before the bar draws
    written: dict[str, Any] = {}
    load_start = load_average()
    with progress_bar() as update:
        rows = run_bench(
            build_dir, backends=names, towers=tower_names,
            batch_sizes=sizes, text_len=text_len, warmup=warmup, iters=iters,
            threads=threads, dense=dense, int8=int8, min_time=min_time, json_path=json_path, on_written=written.update,
            on_progress=update, precision=precision, dtype=dtype, compile=compile,
            cuda_graphs=cuda_graphs,
        )
    print_bench(rows, BuildManifest.read(build_dir).model)
    kept = written.get("previous") or []
    err.print(f"wrote {build_dir / (BENCH_STEM + '.json')}, {BENCH_STEM}.md, {BENCH_STEM}.png"
              + (f" and {json_path}" if json_path else "")
              + (f"; the previous report is kept as {', '.join(p.name for p in kept)}" if kept else ""),
              soft_wrap=True, highlight=False, markup=False)
    unstable = warning(rows, {"load_avg_start": load_start, "load_avg_end": load_average()})
    if unstable:
        show_warning(unstable)
