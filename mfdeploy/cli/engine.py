"""`mfdeploy engine`: TensorRT engines from exported towers, or the trtexec commands to build them elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfdeploy.artifacts.layout import ENGINE_RECORD
from mfdeploy.cli.options import Fp16Opt, MaxBatchOpt, MaxTextLenOpt, SparseOpt
from mfdeploy.cli.render import PLAIN, err, out
from mfdeploy.cli.root import app


@app.command()
def engine(
    onnx_dir: Annotated[Path, typer.Argument(
        help="A `mfdeploy export` directory, or a `mfdeploy build` directory (its onnx/).")],
    fp16: Fp16Opt = False,
    sparse: SparseOpt = "auto",
    max_batch: MaxBatchOpt = 32,
    max_text_len: MaxTextLenOpt = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Where engines, logs and engine.json go (default: ONNX_DIR; a build's are engines/).")] = None,
    int8: Annotated[bool, typer.Option(
        "--int8",
        help="INT8 (+FP16) engines from a QDQ directory (`mfdeploy quantize --target trt`, a build's onnx_qdq/); "
             "FP8 towers (--mode fp8) build with FP8 kernels, and Q/DQ towers build quantized without it too.")
    ] = False,
) -> None:
    """Build TensorRT engines (vision.plan, text.plan) in ONNX_DIR or --out, else print the trtexec commands."""
    from mfdeploy.exporting import EngineError, build_engines
    from mfdeploy.exporting.engine import engine_dirs
    from mfdeploy.exporting.trtexec import trtexec_script

    onnx_dir, out_dir = engine_dirs(onnx_dir, out_dir, int8)  # a build: its onnx/ (onnx_qdq/) and engines/
    with err.status("building TensorRT engines"):
        record = build_engines(onnx_dir, fp16=fp16, sparse=sparse, max_batch=max_batch, max_text_len=max_text_len,
                               out_dir=out_dir, int8=int8)
    if record["status"] == "skipped":
        out.print(f"TensorRT engines not built: {record['reason']}. Build them elsewhere by running:", **PLAIN)
        for line in trtexec_script(record["trtexec"], record["trtexec_cwd"]):  # cd, mkdir -p, the commands
            out.print(line, **PLAIN)
        return
    for tower, built in record["engines"].items():
        sp, parity = built["sparsity"], built.get("parity")
        check = f", vs ONNX Runtime min cosine {parity['min_cosine']:.5f}" if parity else ""
        out.print(f"{tower}: {out_dir / built['engine']} ({built['bytes'] / 2**20:.1f} MiB, "
                  f"{built['build_s']:.0f} s), sparse kernels on {sp['n_picked_sparse']}/{sp['n_eligible']} "
                  f"eligible layers{check}", **PLAIN)
    for note in record["notes"]:
        err.print(f"note: {note}", **PLAIN)
    if record["status"] == "parity_failed":
        raise EngineError(f"an engine does not match ONNX Runtime within tolerance: see {out_dir / ENGINE_RECORD}")
