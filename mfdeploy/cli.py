"""The `mfdeploy` command line: one thin subcommand per verb, no library logic here."""

from __future__ import annotations

import functools
import inspect
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from mfdeploy import __version__
from mfdeploy.cli_help import Command, Group
from mfdeploy.errors import MfdeployError


class _App(typer.Typer):
    """typer.Typer whose commands render their help the usual way (`mfdeploy.cli_help`)."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:  # noqa: D102
        return super().command(*args, cls=cls or Command, **kwargs)


app = _App(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prune CLIP-style models once (MULTIFLOW, 2:4), export to ONNX, build TensorRT engines, serve and bench.",
)
console = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        out.print(f"mfdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """mfdeploy: prune, export, build, serve."""


ModelArg = Annotated[
    str | None,
    typer.Argument(help="Hub id, checkpoint directory, or prune/build directory (default: the bundled model)."),
]


# Prune options shared by `prune` and `build` (one declaration each).
RatioHelp = "Fraction of prunable weights to remove, in (0, 1)."
ModelOpt = Annotated[str | None, typer.Option("--model", help="Hub id or checkpoint directory (default: bundled).")]
MethodOpt = Annotated[str, typer.Option("--method", help="multiflow | magnitude | wanda | random | ecoflap | mope.")]
BudgetOpt = Annotated[str | None, typer.Option(
    "--budget", help="Layer budget, overriding the method's: uniform | global | modality | ecoflap.")]
PatternOpt = Annotated[str | None, typer.Option("--pattern", help="Semi-structured N:M pattern, e.g. 2:4 (ratio 0.5).")]
CalibOpt = Annotated[str | None, typer.Option("--calib", help="'shapes' or a JSONL of image-caption pairs.")]
CalibSamplesOpt = Annotated[int, typer.Option("--calib-samples", help="Calibration pairs.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Calibration batch size.")]
IncludeOpt = Annotated[list[str] | None, typer.Option(
    "--include", metavar="GLOB", help="Only prune layers matching this glob; repeat for more.")]
ExcludeOpt = Annotated[list[str] | None, typer.Option(
    "--exclude", metavar="GLOB", help="Never prune layers matching this glob; repeat for more.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed (random criterion, ECoFLaP perturbations).")]
SmaxDeltaOpt = Annotated[float, typer.Option("--smax-delta", help="ECoFLaP: cap s_max = ratio + this.")]
NeuronGroupOpt = Annotated[int, typer.Option("--neuron-group", help="MoPE: MLP neurons per group.")]
DepthShareOpt = Annotated[float, typer.Option("--depth-share", help="MoPE: share of the ratio taken by whole layers.")]
DistillStepsOpt = Annotated[int, typer.Option("--distill-steps", help="MoPE: distillation steps after pruning.")]
# Every command's --force: naming only "--force" makes it a plain flag (no --no-force twin).
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace an output directory that mfdeploy wrote (never one holding other files).")]

# The prune options of `prune` and `build`: parameter -> (declaration, default, PruneConfig field).
PRUNE_OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "model": (ModelOpt, None, "model"),
    "method": (MethodOpt, "multiflow", "method"),
    "budget": (BudgetOpt, None, "budget"),
    "pattern": (PatternOpt, None, "pattern"),
    "calib": (CalibOpt, None, "calib"),
    "calib_samples": (CalibSamplesOpt, 256, "calib_samples"),
    "batch_size": (BatchSizeOpt, 32, "batch_size"),
    "include": (IncludeOpt, None, "include"),
    "exclude": (ExcludeOpt, None, "exclude"),
    "seed": (SeedOpt, 0, "seed"),
    "smax_delta": (SmaxDeltaOpt, 0.1, "ecoflap_smax_delta"),
    "neuron_group": (NeuronGroupOpt, 64, "mope_neuron_group"),
    "depth_share": (DepthShareOpt, 0.0, "mope_depth_share"),
    "distill_steps": (DistillStepsOpt, 0, "distill_steps"),
}


def with_prune_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the prune options; it receives them as `prune_opts`, `PruneConfig` keyword arguments.

    Typer reads a command's options from its signature and type hints, so the
    wrapper presents the command's own parameters (all but `prune_opts`)
    followed by the shared ones, and gathers the latter back into one dict.
    """
    hints = get_type_hints(command, include_extras=True)  # evaluated: this module defers annotations
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name])
           for p in inspect.signature(command).parameters.values() if p.name != "prune_opts"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=declared)
              for name, (declared, default, _) in PRUNE_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        opts = {field: kwargs.pop(name) for name, (_, _, field) in PRUNE_OPTIONS.items()}
        opts["include"], opts["exclude"] = opts["include"] or [], opts["exclude"] or []
        return command(prune_opts=opts, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + shared, return_annotation=None)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper


@app.command()
def info(model: ModelArg = None) -> None:
    """Print a model's towers, parameter counts, prunable layers and input limits."""
    from mfdeploy.models import load

    adapter = load(model, need_processors=False)  # sizes come from config.json; no tokenizer needed
    counts = adapter.parameter_counts()
    layers = adapter.prunable_layers()
    label = adapter.pruned_label
    table = Table(title=f"{adapter.model_id}" + (" (pruned)" if label else ""), show_header=True)
    table.add_column("tower")
    table.add_column("parameters", justify="right")
    table.add_column("prunable layers", justify="right")
    table.add_column("prunable weights", justify="right")
    for modality, attr in (("vision", "vision_model"), ("text", "text_model")):
        n_params = sum(p.numel() for p in getattr(adapter.model, attr).parameters())
        n_layers = sum(1 for v in layers.values() if v.modality == modality)
        table.add_row(modality, f"{n_params:,}", str(n_layers), f"{counts.get('prunable_' + modality, 0):,}")
    out.print(table)
    if label:
        out.print(f"pruned: {label}", highlight=False, soft_wrap=True)
    out.print(f"total parameters: {counts['total']:,}")
    out.print(f"prunable layers: {len(layers)}")
    out.print(f"image size: {adapter.image_size}x{adapter.image_size}")
    out.print(f"max text length: {adapter.max_text_len} tokens")
    out.print(f"embedding dim: {adapter.embed_dim}")


@app.command()
@with_prune_options
def prune(
    ratio: Annotated[float, typer.Option(help=RatioHelp)],
    out: Annotated[Path, typer.Option(help="Output directory (masks.safetensors, pruned/, prune.json).")],
    force: ForceOpt = False,
    *,
    prune_opts: dict[str, Any],
) -> None:
    """Prune a model once (task-agnostic) and write masks, the folded checkpoint and a report."""
    from mfdeploy.progress import console_reporter
    from mfdeploy.prune import PruneConfig, run_prune

    cfg = PruneConfig(ratio=ratio, **prune_opts)
    with console_reporter(cfg.show_progress) as reporter:
        record = run_prune(cfg, out, force=force, reporter=reporter)
    sp = record["sparsity"]
    mods = ", ".join(f"{k} {v:.3f}" for k, v in sp["per_modality"].items())
    out_console = Console()
    out_console.print(f"pruned {record['model']} with {record['method']} ({record['pattern']}): "
                      f"sparsity {sp['overall']:.3f} ({mods}) -> {out}")


@app.command("eval")
def eval_(
    model: ModelArg = None,
    data: Annotated[str, typer.Option(
        help="'shapes', a JSONL of image-caption pairs, or an image folder with one sub-folder per class "
             "(see above).")] = "shapes",
    backend: Annotated[str, typer.Option(
        help="torch | onnx (ONNX Runtime on the CPU) | onnx-int8 (a build's onnx_int8/).")] = "torch",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.")] = None,
    template: Annotated[
        str | None, typer.Option(help="Prompt template of an image folder's classes (default: 'a photo of a {}.').")
    ] = None,
    retention: Annotated[
        bool, typer.Option(help="For a prune/build directory, also evaluate the dense model and show retention.")
    ] = True,
    images: Annotated[int, typer.Option(help="Shapes suite: single-object images for the attribute tasks.")] = 1000,
    pairs: Annotated[int, typer.Option(help="Shapes suite: image-caption pairs for retrieval.")] = 1000,
) -> None:
    """Zero-shot accuracy and retrieval recall of a model; retention against the dense model when known.

    An image folder (--data FOLDER) holds one sub-folder per class, at least two, each named after its class and
    holding that class's images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif): FOLDER/cat/001.jpg,
    FOLDER/dog/002.png, ... The sub-folder's name, with '_' read as a space, fills the prompt template
    (--template, default 'a photo of a {}.'); the score is zero-shot accuracy over every image.
    """
    from mfdeploy.eval import evaluate_with_retention, results_table, write_json
    from mfdeploy.eval.report import check_json_target

    if json_path is not None:
        check_json_target(json_path)
    with console.status("evaluating") as status:
        result = evaluate_with_retention(model, data, backend, template=template, dense=retention,
                                         progress=lambda msg: status.update(msg), n_images=images,
                                         n_retrieval=pairs)
    out.print(results_table(result))
    if "retention_error" in result:
        console.print(f"[yellow]warning:[/] no retention: {result['retention_error']}", highlight=False)
    if json_path is not None:
        console.print(f"wrote {write_json(result, json_path)}", highlight=False)


@app.command()
def bench(
    build_dir: Annotated[Path, typer.Argument(help="A `mfdeploy build --out` directory.")],
    backends: Annotated[str | None, typer.Option(
        help="Comma-separated: torch, ort-cpu, ort-cuda, ort-trt, trt (default: all; those that cannot run "
             "here are listed as unavailable, with the reason).")] = None,
    towers: Annotated[str, typer.Option(help="Comma-separated: vision, text.")] = "vision,text",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated positive batch sizes.")] = "1,8,32",
    text_len: Annotated[int | None, typer.Option(
        help="Tokens per text (default 16, capped at the model's maximum).")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed calls per variant before timing each cell.")] = 3,
    iters: Annotated[int, typer.Option(help="Minimum timed calls per variant and cell.")] = 20,
    min_time: Annotated[float, typer.Option(
        help="Minimum timed seconds per variant and cell (longer: steadier numbers).")] = 0.5,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for torch and ONNX Runtime (default: physical cores).")] = None,
    dense: Annotated[bool, typer.Option(
        "--dense/--no-dense", help="Also time the dense model, interleaved with the pruned one.")] = True,
    int8: Annotated[bool | None, typer.Option(
        "--int8/--no-int8", help="Also time the build's onnx_int8/ towers (ONNX Runtime backends), in turn with "
                                 "pruned and dense (default: when the build has them).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the JSON rows here.")] = None,
) -> None:
    """Throughput and latency of every backend, pruned vs dense; writes bench.json/.md/.png into BUILD_DIR.

    An earlier report there is kept, renamed bench-<UTC time it was written>.json/.md/.png. Cells whose p95 latency
    exceeds 2x p50 are flagged as unstable (a busy machine): see README, bench, for steadier numbers.
    """
    from mfdeploy.errors import UserError
    from mfdeploy.serve.bench import parse_batch_sizes, parse_list, run_bench
    from mfdeploy.serve.registry import BACKENDS, TOWERS
    from mfdeploy.serve.stability import load_average, warning

    names = parse_list(backends, "backends", list(BACKENDS)) if backends is not None else None
    written: dict[str, Any] = {}
    load_start = load_average()
    rows = run_bench(
        build_dir, backends=names, towers=parse_list(towers, "towers", list(TOWERS)),
        batch_sizes=parse_batch_sizes(batch_sizes), text_len=text_len, warmup=warmup, iters=iters,
        threads=threads, dense=dense, int8=int8, min_time=min_time, json_path=json_path,
        on_written=written.update,
    )
    if not any("throughput" in r for r in rows):
        reasons = "; ".join(f"{r['backend']}: {r['reason']}" for r in rows if r.get("status") == "unavailable")
        raise UserError(f"no requested backend can run on this machine ({reasons}); see {build_dir / 'bench.md'}")
    kept = written.get("previous") or []
    console.print(f"wrote {build_dir / 'bench.json'}, bench.md, bench.png" + (f" and {json_path}" if json_path else "")
                  + (f"; the previous report is kept as {', '.join(p.name for p in kept)}" if kept else ""),
                  soft_wrap=True, highlight=False, markup=False)
    unstable = warning(rows, {"load_avg_start": load_start, "load_avg_end": load_average()})
    if unstable:
        console.print(f"[yellow]warning:[/] {unstable}", soft_wrap=True, highlight=False)


@app.command()
def export(
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory (vision.onnx, text.onnx, export.json).")],
    model: Annotated[
        str | None, typer.Argument(help="Hub id, checkpoint directory or prune directory (default: bundled).")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset; 17 or newer keeps LayerNorm one op.")] = 17,
    external_data: Annotated[bool | None, typer.Option(
        "--external-data/--no-external-data",
        help="Weights in .onnx.data files (default: only for models near protobuf's 2 GB limit).")] = None,
    force: ForceOpt = False,
) -> None:
    """Export the vision and text towers to ONNX, check them against PyTorch, write export.json."""
    from mfdeploy.export import export_model

    with console.status("exporting") as status:
        manifest = export_model(model, out_dir, opset=opset, force=force, external_data=external_data,
                                on_step=lambda msg: status.update(msg))
    parity = manifest["parity"]
    out.print(f"exported {manifest['model']['id']} (opset {manifest['opset']}) -> {out_dir}: ONNX Runtime vs "
              f"PyTorch min cosine vision {parity['vision']['min_cosine']:.6f}, "
              f"text {parity['text']['min_cosine']:.6f}", highlight=False, soft_wrap=True)


@app.command()
def engine(
    onnx_dir: Annotated[Path, typer.Argument(
        help="A `mfdeploy export` directory, or a `mfdeploy build` directory (its onnx/).")],
    fp16: Annotated[bool, typer.Option(help="Allow FP16 kernels (2:4 sparse kernels need FP16 or INT8).")] = False,
    sparse: Annotated[str, typer.Option(
        help="auto: use 2:4 sparse kernels when the weights hold the pattern; on; off.")] = "auto",
    max_batch: Annotated[int, typer.Option(help="Largest batch of the optimisation profiles.")] = 32,
    max_text_len: Annotated[int | None, typer.Option(
        help="Longest text of the profile (default: the model's maximum).")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Where engines, logs and engine.json go (default: ONNX_DIR; a build's are engines/).")] = None,
    int8: Annotated[bool, typer.Option(
        "--int8",
        help="INT8 (+FP16) engines from a QDQ directory (`mfdeploy quantize --target trt`, a build's onnx_qdq/).")
    ] = False,
) -> None:
    """Build TensorRT engines (vision.plan, text.plan) in ONNX_DIR or --out, else print the trtexec commands."""
    from mfdeploy.export import EngineError, build_engines
    from mfdeploy.export.engine import engine_dirs

    onnx_dir, out_dir = engine_dirs(onnx_dir, out_dir)  # a build directory: its onnx/ and engines/
    with console.status("building TensorRT engines"):
        record = build_engines(onnx_dir, fp16=fp16, sparse=sparse, max_batch=max_batch, max_text_len=max_text_len,
                               out_dir=out_dir, int8=int8)
    say = {"highlight": False, "soft_wrap": True, "markup": False}
    if record["status"] == "skipped":
        out.print(f"TensorRT engines not built: {record['reason']}. Build them elsewhere by running, "
                  f"inside {onnx_dir}:", **say)
        for command in record["trtexec"]:
            out.print(command, **say)
        return
    for tower, built in record["engines"].items():
        sp, parity = built["sparsity"], built.get("parity")
        check = f", vs ONNX Runtime min cosine {parity['min_cosine']:.5f}" if parity else ""
        out.print(f"{tower}: {out_dir / built['engine']} ({built['bytes'] / 2**20:.1f} MiB, "
                  f"{built['build_s']:.0f} s), sparse kernels on {sp['n_picked_sparse']}/{sp['n_eligible']} "
                  f"eligible layers{check}", **say)
    for note in record["notes"]:
        console.print(f"note: {note}", **say)
    if record["status"] == "parity_failed":
        raise EngineError(f"an engine does not match ONNX Runtime within tolerance: see {out_dir / 'engine.json'}")


@app.command()
def quantize(
    src: Annotated[Path, typer.Argument(help="An ONNX export directory or a build directory.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory (vision.onnx, text.onnx, quantize.json).")],
    calib: CalibOpt = None,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="Calibration pairs.")] = 128,
    target: Annotated[str, typer.Option(help="ort: ONNX Runtime CPU kernels; trt: TensorRT QDQ (ModelOpt).")] = "ort",
    mode: Annotated[str, typer.Option(help="int8 | fp8 (fp8: --target trt only).")] = "int8",
    scheme: Annotated[str, typer.Option(
        help="--target ort: static (calibrated QDQ) | dynamic | auto (per tower, the faster one measured: "
             "README, Quantization).")] = "auto",
    keep_float: Annotated[list[str] | None, typer.Option(
        "--keep-float", metavar="GLOB", help="Keep nodes whose name matches this glob in float; repeat for more.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the quantizers' logs.")] = False,
    force: ForceOpt = False,
) -> None:
    """Quantize both towers (INT8, or FP8 for TensorRT), gate them against fp32, write quantize.json."""
    from mfdeploy.quantize import QuantizeConfig, run_quantize

    cfg = QuantizeConfig(target=target, mode=mode, scheme=scheme, calib=calib, calib_samples=calib_samples,
                         keep_float=keep_float or [], verbose=verbose)
    with console.status("quantizing"):
        record = run_quantize(src, out_dir, cfg, force=force, warn=lambda msg: console.print(
            f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True))
    for tower, rec in record["towers"].items():
        out.print(f"{tower}: {len(rec['quantized_nodes'])} nodes {record['mode']}, {len(rec['float_nodes'])} kept "
                  f"float, {rec['bytes'] / 2**20:.1f} MiB ({rec['size_ratio']:.2f}x fp32), min cosine vs fp32 "
                  f"{record['parity'][tower]['min_cosine']:.5f}", highlight=False, soft_wrap=True)
    out.print(f"wrote {out_dir}", highlight=False, soft_wrap=True)


@app.command()
@with_prune_options
def build(
    ratio: Annotated[float, typer.Option(help=RatioHelp)] = 0.5,
    fp16: Annotated[bool, typer.Option(help="FP16 TensorRT engines (needed for 2:4 sparse tensor cores).")] = False,
    sparse: Annotated[str, typer.Option(help="TensorRT sparse weights: auto | on | off.")] = "auto",
    eval_data: Annotated[str | None, typer.Option("--eval", help="Evaluate dense vs pruned on this data "
                                                     "(default: shapes for the bundled model).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the engines' profiles.")] = 32,
    max_text_len: Annotated[int | None, typer.Option(help="Longest text of the engines' profiles.")] = None,
    int8: Annotated[bool, typer.Option(
        "--int8", help="Also quantize: onnx_int8/ (ONNX Runtime) and onnx_qdq/ (TensorRT), parity-gated; INT8 "
                       "engines from onnx_qdq/.")] = False,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("build"),
    force: ForceOpt = False,
    *,
    prune_opts: dict[str, Any],
) -> None:
    """The whole pipeline: prune, fold, export, engines where possible, evaluate, report."""
    from mfdeploy.pipeline import BuildConfig, run_build
    from mfdeploy.prune import PruneConfig
    from mfdeploy.report import summary_table

    pcfg = PruneConfig(ratio=ratio, **prune_opts)
    cfg = BuildConfig(prune=pcfg, out=out, fp16=fp16, sparse=sparse, opset=opset, max_batch=max_batch,
                      max_text_len=max_text_len, eval_data=eval_data, force=force, int8=int8)

    def on_stage(name: str, step: int, total: int) -> None:
        console.print(f"[bold cyan][{step}/{total}][/] {name}", highlight=False)

    manifest = run_build(cfg, on_stage=on_stage)
    Console().print(summary_table(manifest, out))
    eng = manifest.get("engine") or {}
    if eng.get("status") != "built" and eng.get("trtexec"):
        from mfdeploy.report import trtexec_lines

        for line in trtexec_lines(eng, eng.get("trtexec_cwd", str(out / "onnx"))):  # unwrapped: pasteable
            Console().print(line, soft_wrap=True, highlight=False, markup=False)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors end in one line on stderr and exit code 2, never a traceback."""
    from mfdeploy.cli_help import usage_errors
    from mfdeploy.io import Terminated

    def on_sigterm(signum: int, frame: object) -> None:
        raise Terminated()  # unwinds like Ctrl-C, so temporary outputs are removed (a container stop)

    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc != 0:  # typer returns (not raises) the code of Exit and of Ctrl-C
            if rc == 130:
                console.print("[bold red]error:[/] interrupted")
            sys.exit(rc)
    except MfdeployError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except usage_errors() as e:  # a bad command line: typer's own "Usage: ... Error: ..." lines, exit 2
        e.show()  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[bold red]error:[/] interrupted")
        sys.exit(130)
    except Terminated:
        console.print("[bold red]error:[/] terminated (SIGTERM); nothing was left half written")
        sys.exit(143)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
