"""`mfdeploy prune`: masks, the folded checkpoint and prune.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mfdeploy.artifacts.layout import MASKS_FILE, PRUNE_MANIFEST, PRUNED_DIR
from mfdeploy.cli.options import ForceOpt, RatioHelp, with_prune_options
from mfdeploy.cli.render import PLAIN, console_reporter
from mfdeploy.cli.render import out as out_console
from mfdeploy.cli.root import app


@app.command()
@with_prune_options
def prune(
    ratio: Annotated[float, typer.Option(help=RatioHelp)],
    out: Annotated[Path, typer.Option(help=f"Output directory ({MASKS_FILE}, {PRUNED_DIR}/, {PRUNE_MANIFEST}).")],
    force: ForceOpt = False,
    *,
    prune_opts: dict[str, Any],
) -> None:
    """Prune a model once (task-agnostic) and write masks, the folded checkpoint and a report."""
    from mfdeploy.pipelines import prune as pipeline
    from mfdeploy.pruning import PruneConfig

    cfg = PruneConfig(ratio=ratio, **prune_opts)
    with console_reporter(cfg.show_progress) as reporter:
        record = pipeline.run_prune(cfg, out, force=force, reporter=reporter)
    sp = record["sparsity"]
    mods = ", ".join(f"{k} {v:.3f}" for k, v in sp["per_modality"].items())
    out_console.print(f"pruned {record['model']} with {record['method']} ({record['pattern']}): "
                      f"sparsity {sp['overall']:.3f} ({mods}) -> {out}", **PLAIN)  # one line, even in a log
    if record.get("distill"):
        from mfdeploy.pruning.distill import summary

        out_console.print(f"distilled from the dense model: {summary(record['distill'])}", **PLAIN)
