"""Option groups shared by verbs, declared once: the prune options (`prune`, `build`), the TensorRT engine
options (`engine`, `build`), `--force`, and the model argument."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import typer

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
MopeCacheOpt = Annotated[Path | None, typer.Option(
    "--mope-cache", metavar="DIR", help="MoPE: a folder of module errors scored by earlier runs, reused where the "
    "model, calibration pairs, neuron group and earlier layers' cuts match (written as scored; a killed run resumes).")]
DistillStepsOpt = Annotated[int, typer.Option(
    "--distill-steps", help="Recovery: steps of distillation from the dense model after pruning (any method; "
    "pruned weights stay zero). 0: none.")]
DistillLrOpt = Annotated[float, typer.Option("--distill-lr", help="Recovery: AdamW learning rate.")]
DistillParamsOpt = Annotated[str, typer.Option(
    "--distill-params", help="Recovery: what trains: all (every weight) | prunable (only the pruned layers).")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (CUDA when present) | cpu | cuda | cuda:N: where pruning runs.")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="float32 | float16 | bfloat16: the model's precision while pruning (statistics stay float32).")]
# The inference precision of the CPU backends (`bench`, `eval`, `serve`): anything under fp32 is checked against the
# fp32 towers on the build's parity inputs first, and refused with its cosines when it falls under the gate.
PrecisionOpt = Annotated[str | None, typer.Option(
    "--precision", help="OpenVINO backends: auto (default: what the CPU runs natively, bf16 with AVX-512 BF16 or "
    "AMX) | f32 | bf16 | f16; gated against the fp32 towers.")]
RunDtypeOpt = Annotated[str | None, typer.Option(
    "--dtype", help="torch backend (CPU): float32 (default) | bfloat16; torch-cuda(-sparse): float16 (default) | "
    "float8 (FP8 linears, GPUs of compute capability 8.9+; with -sparse, 2:4 ones on cuSPARSELt's FP8 kernels where "
    "faster). Below the default, gated against the reference towers.")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="torch backends: run each tower through torch.compile (inductor), compiled for every batch "
    "size and text length at start-up; the cache directory is reported.")]
CudaGraphsOpt = Annotated[bool, typer.Option(
    "--cuda-graphs/--no-cuda-graphs", help="torch-cuda backends: replay each tower from CUDA graphs captured at "
    "start-up, one per batch (and text length) bucket; off: eager.")]
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
    "mope_cache": (MopeCacheOpt, None, "mope_cache"),
    "distill_steps": (DistillStepsOpt, 0, "distill_steps"),
    "distill_lr": (DistillLrOpt, 1e-4, "distill_lr"),
    "distill_params": (DistillParamsOpt, "all", "distill_params"),
    "device": (DeviceOpt, "auto", "device"),
    "dtype": (DtypeOpt, "float32", "dtype"),
}


def with_prune_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the prune options; it receives them as `prune_opts`, `PruneConfig` keyword arguments.

    Typer reads a command's options from its signature and type hints, so the
    wrapper presents the command's own parameters (all but `prune_opts`)
    followed by the shared ones, and gathers the latter back into one dict.
    """
    hints = get_type_hints(command, include_extras=True)  # evaluated: this module defers annotations
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=_declared(hints[p.name]))
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



# TensorRT engine options of `engine` and `build` (one declaration each; `--int8` means a different thing in
# each verb, so each declares its own).
Fp16Opt = Annotated[bool, typer.Option(
    "--fp16/--no-fp16", help="Allow FP16 kernels (2:4 sparse tensor-core kernels need FP16 or INT8).")]
SparseOpt = Annotated[str, typer.Option(
    "--sparse", help="auto: use 2:4 sparse kernels when the weights hold the pattern; on; off.")]
MaxBatchOpt = Annotated[int, typer.Option("--max-batch", help="Largest batch of the engines' optimisation profiles.")]
MaxTextLenOpt = Annotated[int | None, typer.Option(
    "--max-text-len", help="Longest text of the engines' profiles (default: the model's maximum).")]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset; 17 or newer keeps LayerNorm one op.")]
OutDirOpt = Annotated[Path, typer.Option("--out", help="Output directory.")]


def _declared(hint: Any) -> Any:
    """`hint` as declared: Python 3.10's `get_type_hints` wraps the hint of a parameter whose default is None in
    `Optional[...]`, which hides an `Annotated` (and with it the option's name and help) from typer."""
    args = get_args(hint)
    if get_origin(hint) is Union and len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        if get_origin(inner) is Annotated:
            return inner
    return hint
