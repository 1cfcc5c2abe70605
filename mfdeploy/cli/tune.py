"""`mfdeploy tune`: search method x ratio x precision on a backend and data, keep the Pareto front, build the pick."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfdeploy.cli.options import CalibOpt, ForceOpt, ModelOpt
from mfdeploy.cli.render import PLAIN, err, out
from mfdeploy.cli.root import app
from mfdeploy.errors import UserError


def _given_except(ctx: typer.Context, *names: str) -> list[str]:
    """The options typed on this command line, other than `names` (their first spelling, e.g. `--out`)."""
    def typed(name: str) -> bool:  # by name: typer may carry its own copy of click's enum
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    return [p.opts[0] for p in ctx.command.params if p.name is not None and p.name not in names and typed(p.name)]


@app.command()
def tune(
    ctx: typer.Context,
    tune_dir: Annotated[Path | None, typer.Argument(
        help="With --pick: the directory of an earlier tune.", show_default=False)] = None,
    model: ModelOpt = None,
    calib: CalibOpt = None,
    eval_data: Annotated[str | None, typer.Option(
        "--eval", help="Quality data: a JSONL of image-caption pairs or an image folder (default: the shapes suite, "
                       "for the bundled models only).")] = None,
    backend: Annotated[str, typer.Option(
        help="Where the pick will run, and where every candidate is evaluated and timed: ort-cpu | ort-int8 | "
             "openvino | openvino-int8 | torch | torch-cuda (ort-int8, openvino-int8: INT8 candidates only).")
    ] = "ort-cpu",
    batch_size: Annotated[int, typer.Option(help="Images and texts per call when timing.")] = 8,
    max_drop: Annotated[float | None, typer.Option(
        help="Largest drop in quality from dense, in points: mean zero-shot task accuracy, or for a JSONL of pairs "
             "mean recall@1 (default 1 when no constraint is given).")] = None,
    min_speedup: Annotated[float | None, typer.Option(help="Smallest speed-up over dense on --backend.")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(
        help="Largest p50 latency, vision + text at --batch-size, in ms.")] = None,
    max_size_mb: Annotated[float | None, typer.Option(
        help="Largest size of the served towers on disk, in MiB (2^20 bytes).")] = None,
    time_budget: Annotated[float, typer.Option(
        help="Minutes to search; a trial starts only if a typical one still fits.")] = 15.0,
    space: Annotated[str, typer.Option(
        help="default | quick | a TOML file (see docs/guides/tune.md).")] = "default",
    out_dir: Annotated[Path, typer.Option("--out", help="Tune directory: journal, reports, best/.")] = Path("tune"),
    pick: Annotated[int | None, typer.Option(
        help="Build trial N of an earlier tune (TUNE_DIR) into TUNE_DIR/best, without searching.")] = None,
    seed: Annotated[int, typer.Option(help="Order of the search and every prune's seed.")] = 0,
    force: ForceOpt = False,
) -> None:
    """Search method x ratio x precision on your backend and data; write the Pareto front, build the pick.

    Every candidate is measured, not predicted: its quality through the backend and precision it would be
    served with, its speed interleaved with the dense model on that backend. Finished trials are journalled
    in --out as they complete: a killed tune re-run with the same arguments continues where it stopped.
    Writes tune.json, tune.md, pareto.png and best/ (a complete build: `mfdeploy serve DIR/best`).
    """
    from mfdeploy.tuning import Constraints, TuneConfig, pick_trial, run_tune

    def say(message: str) -> None:
        err.print(message, **PLAIN)

    if pick is not None:
        if tune_dir is None:
            raise UserError("--pick N needs the tune directory: mfdeploy tune DIR --pick N")
        searching = _given_except(ctx, "tune_dir", "pick")
        if searching:  # they would be ignored: the trial is rebuilt from the tune's own settings
            raise UserError(f"{', '.join(searching)}: options of a new search; --pick rebuilds trial "
                                     f"{pick} of {tune_dir} with the settings it was measured with (drop them)")
        result = pick_trial(tune_dir, pick, say=say)
    else:
        if tune_dir is not None:
            raise UserError(f"{tune_dir}: a directory argument goes with --pick; a new tune takes --out")
        cfg = TuneConfig(out=out_dir, model=model, calib=calib, eval_data=eval_data, backend=backend,
                         batch_size=batch_size, constraints=Constraints(max_drop, min_speedup, max_latency_ms,
                                                                        max_size_mb),
                         time_budget_min=time_budget, space=space, force=force, seed=seed)
        result = run_tune(cfg, say=say)
    out.print(f"wrote {result.out / 'tune.json'}, tune.md, pareto.png and {result.out / 'best'}/", **PLAIN)
