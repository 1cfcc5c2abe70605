"""`mfdeploy triton`: a Triton Inference Server model repository (configs, models, preprocessing) for a build."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfdeploy.artifacts.layout import TRITON_PREPROCESSING_DIR, TRITON_README
from mfdeploy.cli.options import ForceOpt
from mfdeploy.cli.render import PLAIN, err, out, warning
from mfdeploy.cli.root import app


@app.command()
def triton(
    build_dir: Annotated[Path, typer.Argument(help="A `mfdeploy build` directory.")],
    out_dir: Annotated[Path, typer.Option("--out", help="The model repository to write.")],
    prefix: Annotated[str | None, typer.Option(
        help="Model names start with it: PREFIX_vision_onnx, PREFIX_text_onnx_int8, PREFIX_text_plan, "
             "PREFIX_vision_openvino, ... (default: the build's model family, clip or siglip).")] = None,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", help="max_batch_size of every model (default: the build's TensorRT profile max, else 32; "
        "at most the profile's max when the build has engines).")] = None,
    onnx_kind: Annotated[str, typer.Option(
        "--onnx-kind", help="cpu | gpu: where the fp32 ONNX models run under ONNX Runtime (INT8 ones: cpu; plans: "
        "gpu); openvino: every ONNX model, fp32 and INT8, under Triton's OpenVINO backend (CPU).")] = "cpu",
    max_queue_delay_us: Annotated[int, typer.Option(
        "--max-queue-delay-us", help="How long the dynamic batcher may hold a request to fill a batch.")] = 100,
    force: ForceOpt = False,
) -> None:
    """Write a Triton model repository for BUILD_DIR: one model per tower and format (ONNX, INT8, TensorRT plan)."""
    from mfdeploy.deploy import TritonConfig, write_triton_repo

    cfg = TritonConfig(prefix=prefix, max_batch=max_batch, onnx_kind=onnx_kind, max_queue_delay_us=max_queue_delay_us)
    with err.status("writing the Triton model repository"):
        record = write_triton_repo(build_dir, out_dir, cfg, force=force, warn=warning)
    for name, model in record["models"].items():
        out.print(f"{name}: {model['platform']} ({model['instance_kind']}) from {model['source']}", **PLAIN)
    out.print(f"max_batch_size {record['max_batch']} with dynamic batching; tokenizer and image processor in "
              f"{out_dir / TRITON_PREPROCESSING_DIR}", **PLAIN)
    out.print(f"wrote {out_dir}; not served by Triton here: {out_dir / TRITON_README} says how to start "
              "tritonserver on it", **PLAIN)
