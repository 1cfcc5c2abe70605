"""The `mfdeploy` command line: one thin subcommand per verb, no library logic here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from mfdeploy import __version__
from mfdeploy.errors import MfdeployError

app = typer.Typer(
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
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """mfdeploy: prune, export, build, serve."""


ModelArg = Annotated[
    Optional[str],
    typer.Argument(help="Hub id, checkpoint directory, or prune/build directory (default: the bundled model)."),
]


@app.command()
def info(model: ModelArg = None) -> None:
    """Print a model's towers, parameter counts, prunable layers and input limits."""
    from mfdeploy.models import load

    adapter = load(model)
    counts = adapter.parameter_counts()
    layers = adapter.prunable_layers()
    table = Table(title=f"{adapter.model_id}", show_header=True)
    table.add_column("tower")
    table.add_column("parameters", justify="right")
    table.add_column("prunable layers", justify="right")
    table.add_column("prunable weights", justify="right")
    for modality, attr in (("vision", "vision_model"), ("text", "text_model")):
        n_params = sum(p.numel() for p in getattr(adapter.model, attr).parameters())
        n_layers = sum(1 for v in layers.values() if v.modality == modality)
        table.add_row(modality, f"{n_params:,}", str(n_layers), f"{counts.get('prunable_' + modality, 0):,}")
    out.print(table)
    out.print(f"total parameters: {counts['total']:,}")
    out.print(f"prunable layers: {len(layers)}")
    out.print(f"image size: {adapter.image_size}x{adapter.image_size}")
    out.print(f"max text length: {adapter.max_text_len} tokens")
    out.print(f"embedding dim: {adapter.embed_dim}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors end in one line on stderr and exit code 2, never a traceback."""
    import click

    try:
        app(args=argv, standalone_mode=False)
    except MfdeployError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        console.print("[bold red]error:[/] interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
