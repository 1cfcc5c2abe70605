"""`mfdeploy build`: the whole pipeline (prune, export, quantize, engines, evaluate, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mfdeploy.artifacts.layout import ONNX_DIR
from mfdeploy.cli.options import (
    ForceOpt,
    Fp16Opt,
    MaxBatchOpt,
    MaxTextLenOpt,
    OpsetOpt,
    RatioHelp,
    SparseOpt,
    with_prune_options,
)
from mfdeploy.cli.render import PLAIN, build_table, console_reporter, err, labelled, wide_console
from mfdeploy.cli.root import app


@app.command()
@with_prune_options
def build(
    ratio: Annotated[float, typer.Option(help=RatioHelp)] = 0.5,
    fp16: Fp16Opt = False,
    sparse: SparseOpt = "auto",
    eval_data: Annotated[str | None, typer.Option("--eval", help="Evaluate dense vs pruned on this data "
                                                     "(default: shapes for the bundled model).")] = None,
    opset: OpsetOpt = 17,
    max_batch: MaxBatchOpt = 32,
    max_text_len: MaxTextLenOpt = None,
    int8: Annotated[bool, typer.Option(
        "--int8", help="Also quantize: onnx_int8/ (ONNX Runtime) and onnx_qdq/ (TensorRT), parity-gated; INT8 "
                       "engines from onnx_qdq/.")] = False,
    int8_scheme: Annotated[str, typer.Option(
        "--int8-scheme", help="onnx_int8/'s scheme: auto (per tower, the faster on ONNX Runtime: static vision, "
                              "dynamic text) | static (both calibrated QDQ: what OpenVINO runs in INT8) | dynamic."
    )] = "auto",
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("build"),
    force: ForceOpt = False,
    *,
    prune_opts: dict[str, Any],
) -> None:
    """The whole pipeline: prune, fold, export, engines where possible, evaluate, report."""
    from mfdeploy.pipelines import build as pipeline
    from mfdeploy.pipelines.report import trtexec_lines
    from mfdeploy.pruning import PruneConfig

    cfg = pipeline.BuildConfig(prune=PruneConfig(ratio=ratio, **prune_opts), out=out, fp16=fp16, sparse=sparse,
                               opset=opset, max_batch=max_batch, max_text_len=max_text_len, eval_data=eval_data,
                               force=force, int8=int8, int8_scheme=int8_scheme)

    def on_stage(name: str, step: int, total: int) -> None:
        err.print(labelled(f"[{step}/{total}]", "bold cyan", name), highlight=False)

    with console_reporter(cfg.prune.show_progress) as reporter:
        manifest = pipeline.run_build(cfg, on_stage=on_stage, reporter=reporter)
    console = wide_console()
    console.print(build_table(manifest, out))
    eng = manifest.get("engine") or {}
    if eng.get("status") != "built" and eng.get("trtexec"):
        for line in trtexec_lines(eng, eng.get("trtexec_cwd", str(out / ONNX_DIR))):  # unwrapped: pasteable
            console.print(line, **PLAIN)
