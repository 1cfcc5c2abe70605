"""`mfdeploy export`: both towers to ONNX, parity-checked, with export.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfdeploy.cli.options import ForceOpt, OpsetOpt
from mfdeploy.cli.render import err, out, status_text
from mfdeploy.cli.root import app


@app.command()
def export(
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory (the ONNX towers and their manifest).")],
    model: Annotated[
        str | None, typer.Argument(help="Hub id, checkpoint directory or prune directory (default: bundled).")
    ] = None,
    opset: OpsetOpt = 17,
    external_data: Annotated[bool | None, typer.Option(
        "--external-data/--no-external-data",
        help="Weights in .onnx.data files (default: only for models near protobuf's 2 GB limit).")] = None,
    force: ForceOpt = False,
) -> None:
    """Export the vision and text towers to ONNX, check them against PyTorch, write export.json."""
    import inspect

    from mfdeploy import api  # unwrapped: its errors keep the CLI's option names (api_names)

    with err.status("exporting") as status:
        manifest = inspect.unwrap(api.export)(model, out_dir, opset=opset, force=force, external_data=external_data,
                              on_step=lambda msg: status.update(status_text(msg)))
    parity = manifest["parity"]
    out.print(f"exported {manifest['model']['id']} (opset {manifest['opset']}) -> {out_dir}: ONNX Runtime vs "
              f"PyTorch min cosine vision {parity['vision']['min_cosine']:.6f}, "
              f"text {parity['text']['min_cosine']:.6f}", highlight=False, soft_wrap=True)
