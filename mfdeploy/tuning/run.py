"""`mfdeploy tune`: search method x ratio x precision on the user's backend and data, keep the Pareto front of
quality against speed, build the pick.

The entry points (`run_tune`, `pick_trial`), their option checks and the tune directory live here; how the
search orders, screens, reuses and budgets its trials is written once, in `mfdeploy.tuning.search`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mfdeploy.artifacts import guards
from mfdeploy.errors import UserError, is_number
from mfdeploy.tuning import journal
from mfdeploy.tuning.config import TuneConfig, TuneResult
from mfdeploy.tuning.outputs import finish
from mfdeploy.tuning.records import Record
from mfdeploy.tuning.search import Search
from mfdeploy.tuning.space import SPACES, Space, load_space, resolve_backend


def run_tune(cfg: TuneConfig, say: Callable[[str], None] | None = None) -> TuneResult:
    """Search, write `DIR/trials.jsonl` as trials finish, then tune.json/.md, pareto.png and `DIR/best/`.

    Raises:
        UserError: a bad option, an unusable output directory, or no candidate meeting the constraints (after
            the reports are written; the message names the closest).
    """
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.monotonic()
    backend, _ = resolve_backend(cfg.backend)
    space = load_space(cfg.space, cfg.backend)
    data = _eval_data(cfg)
    _check_options(cfg, space, backend)
    space = _fit_neuron_group(space, cfg.model)
    calib_samples = _check_data(cfg, data, space, say)
    out = _prepare_out(Path(cfg.out))
    with journal.DirLock(out):
        if cfg.force:  # only once the lock is held: --force must not delete a tune another process is running
            journal.start_over(out, _written())
        journal.check_settings(out, _settings(cfg, space, backend, data))
        records = _in_space(journal.read_records(out, lambda m: say(f"warning: {m}")), space, out, say)
        failed = [r for r in records if r["state"] == "failed"]
        if failed:  # what failed may have been the environment's (a file since fixed): those trials run again
            keys = guards.some([r["key"] for r in failed])
            say(f"tune: {len(failed)} trial(s) that failed before run again ({keys})")
        search = Search(cfg, space, backend, data, out, records, say, calib_samples=calib_samples)
        search.run(started)
        return finish(search, time.monotonic() - started)


def pick_trial(out: Path, number: int, say: Callable[[str], None] | None = None) -> TuneResult:
    """`mfdeploy tune DIR --pick N`: build trial N of the front as `DIR/best` from the journal, without searching.

    Raises:
        UserError: no tune in `out`, or N is not a complete trial.
    """
    import json

    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out).expanduser()
    settings_path = out / journal.SETTINGS
    if not settings_path.is_file():
        raise UserError(f"{out}: no tune there (no {journal.SETTINGS}); run `mfdeploy tune --out {out}` first")
    try:
        settings = json.loads(settings_path.read_text())
        # the space as the search used it: its TOML may have moved since, or be relative to another directory
        space = Space.from_description(settings["space_lists"])
        cfg = TuneConfig(out=out, model=settings.get("model"), backend=settings["backend_asked"],
                         batch_size=settings["batch_size"], eval_data=settings["eval"], space=settings["space_spec"])
        backend, eval_data = settings["backend"], settings["eval"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        why = f"no {e} entry" if isinstance(e, KeyError) else e
        raise UserError(f"{settings_path}: unreadable ({why}); start the tune over (`mfdeploy tune --out {out} "
                        "--force` with its options) or use another --out") from None
    with journal.DirLock(out):
        records = _in_space(journal.read_records(out, lambda m: say(f"warning: {m}")), space, out, say)
        chosen = [r for r in records if r.get("number") == number]
        if not chosen or chosen[0]["state"] != "complete":
            numbers = ", ".join(f"#{r['number']}" for r in records if r["state"] == "complete") or "none"
            raise UserError(f"--pick {number}: not a complete trial of {out} (complete: {numbers})")
        search = Search(cfg, space, backend, eval_data, out, records, say)
        search._dense()  # dense.json, written by the search
        return finish(search, None, forced=(chosen[0], f"chosen with --pick {number}"))


def _in_space(records: list[Record], space: Space, out: Path, say: Callable[[str], None]) -> list[Record]:
    """The journal's records that are trials of `space`; each other one is named in a warning and left out (its
    trial runs again), as a damaged line is."""
    from mfdeploy.tuning.study import off_space

    kept = []
    for record in records:
        why = off_space(record, space)
        if why is None:
            kept.append(record)
        else:
            say(f"warning: {out / journal.TRIALS}: trial #{record['number']} {record['key']!r}: {why}: skipped, "
                "that trial runs again")
    return kept


def _eval_data(cfg: TuneConfig) -> str:
    from mfdeploy.zoo import is_bundled

    if cfg.eval_data:
        return cfg.eval_data
    if cfg.model is None or is_bundled(cfg.model):
        return "shapes"
    raise UserError(f"--eval DATA is needed for {cfg.model}: tune measures each candidate's quality on your data "
                    "(a JSONL of image-caption pairs or an image folder); the shapes suite fits bundled models only")


def _check_options(cfg: TuneConfig, space: Space, backend: str) -> None:
    from mfdeploy.extras import require
    from mfdeploy.zoo import is_bundled

    c = cfg.constraints
    bounds = (("--max-drop", c.max_drop), ("--min-speedup", c.min_speedup), ("--max-latency-ms", c.max_latency_ms),
              ("--max-size-mb", c.max_size_mb))
    for flag, value in (*bounds, ("--time-budget", cfg.time_budget_min), ("--batch-size", cfg.batch_size),
                        ("--seed", cfg.seed)):
        if value is not None and not is_number(value):  # a Python caller's "5"
            raise UserError(f"{flag} {value!r}: must be a number, not {type(value).__name__}")
    for flag, value in bounds:
        if value is not None and not value >= 0:
            raise UserError(f"{flag} {value}: must be 0 or more")
    if cfg.batch_size <= 0:
        raise UserError(f"--batch-size {cfg.batch_size}: must be positive")
    if not 0 <= cfg.seed < 2**32 or cfg.seed != int(cfg.seed):  # what Optuna's sampler and numpy take
        raise UserError(f"--seed {cfg.seed}: must be a whole number from 0 to {2**32 - 1}")
    if not cfg.time_budget_min > 0:
        raise UserError(f"--time-budget {cfg.time_budget_min}: must be a positive number of minutes")
    require("tune", backend=cfg.backend)
    from mfdeploy.runtime.registry import unavailable_here

    why = unavailable_here(backend)  # before the tune directory is made (it would keep these settings)
    if why is not None:
        raise UserError(f"--backend {cfg.backend}: cannot run on this machine: {why}")
    if cfg.calib is None and cfg.model is not None and not is_bundled(cfg.model):
        raise UserError(f"--calib PAIRS.jsonl is needed for {cfg.model}: pruning and INT8 calibration use "
                        "image-caption pairs (the shapes world only fits the bundled models)")
    if cfg.model is not None:
        from mfdeploy.models import resolve_checkpoint

        resolve_checkpoint(cfg.model)


def _fit_neuron_group(space: Space, model: str | None) -> Space:
    """The space with its MoPE neuron group made finer where the model's MLPs are too narrow for it (the quick
    space's 256 suits ViT-B/32's 3072 wide MLPs, but would keep 80% of the bundled model's 640 at ratio 0.5,
    which MoPE refuses): `mope.fitting_group`."""
    import dataclasses

    from mfdeploy.models.loader import model_config
    from mfdeploy.pruning.methods.mope import fitting_group

    if "neuron_group" not in space.mope:
        return space
    group = fitting_group(model_config(model), int(space.mope["neuron_group"]))
    return dataclasses.replace(space, mope={**space.mope, "neuron_group": group})


def _check_data(cfg: TuneConfig, data: str, space: Space, say: Callable[[str], None]) -> int:
    """A bad --calib or --eval fails here, in one line, before the tune directory is claimed with settings that
    name it (a corrected command would otherwise be refused as a tune with other settings). Returns the calibration
    pairs every prune of the tune reads (`measure.calib_samples`), counted here once for the whole search.

    Every calibration image a prune will read is decoded here: one that does not decode (a truncated file has a
    good header) would otherwise fail every trial of the tune, each after loading the model, until the budget
    ran out. A file shorter than the space's samples is said once here, not in every prune.
    """
    from mfdeploy.data.batching import parse_calib
    from mfdeploy.eval import resolve_data
    from mfdeploy.pruning import PruneConfig
    from mfdeploy.pruning.distill import check_split
    from mfdeploy.pruning.methods.mope import single_pair
    from mfdeploy.tuning.measure import calib_samples

    used, wanted = calib_samples(cfg.calib, space), space.calib_samples or PruneConfig.calib_samples
    source = parse_calib(cfg.calib, samples=used, decode=True)
    steps = [s for s in space.distill_steps if s]
    if steps and source is not None:  # each distilling candidate would fail at its prune, after the dense eval
        check_split(source, used, f"the space's distill_steps {', '.join(map(str, steps))}",
                    ": give a longer --calib, or a space with distill_steps = [0] (--space quick)")
    if used < wanted:
        asked = "the space's [calibration] samples" if space.calib_samples else "prune's default of"
        say(f"warning: {cfg.calib} holds {used} image-caption pairs, fewer than {asked} {wanted}: every prune "
            f"calibrates on {used}")
    if used < 2 and "mope" in space.methods:  # each MoPE candidate would fail at its prune
        raise UserError(single_pair(f"--calib {cfg.calib} (one pair)") + ", or use a space without mope")
    if data != "shapes":  # the shapes suite is drawn, not read: nothing to check, and it takes a while
        resolve_data(data, option="--eval")
    return used


def _settings(cfg: TuneConfig, space: Space, backend: str, data: str) -> dict[str, Any]:
    spec = cfg.space if cfg.space in SPACES else str(Path(cfg.space).expanduser().resolve())
    return {"model": _local(cfg.model), "backend": backend, "backend_asked": cfg.backend, "batch_size": cfg.batch_size,
            "eval": _local(data), "calib": _local(cfg.calib), "space": space.fingerprint(), "space_spec": spec,
            "space_lists": space.describe(), "seed": cfg.seed}


def _local(value: Any) -> Any:
    """A local file or folder by its absolute path (`--pick` and a resumed tune read it from any folder); a hub id,
    "shapes" or None as given."""
    return str(Path(value).expanduser().resolve()) if isinstance(value, str) and Path(value).expanduser().exists() \
        else value


def _prepare_out(out: Path) -> Path:
    from mfdeploy.artifacts.writable import check_writable
    from mfdeploy.errors import write_error

    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file is there, not a directory")
    if out.is_symlink() and not out.exists():  # mkdir finds it "exists"; every write into it then fails
        raise UserError(f"--out {out}: a symbolic link to {out.readlink()}, which does not exist; choose another --out")
    from mfdeploy.artifacts.layout import MANIFESTS

    for above in out.resolve().parents:  # a tune's files in a build would make `build --force` refuse it as foreign
        made = next((m for m in MANIFESTS if (above / m).is_file()), None)
        if made is not None:
            raise UserError(f"--out {out}: inside {above}, an output of mfdeploy ({made}); choose a folder outside it")
    is_tune = (out / journal.SETTINGS).is_file()  # written before any trial: a trials.jsonl alone is not a tune
    # a tune killed before it wrote its settings leaves its lock (and perhaps the settings' temporary folder)
    started = out.is_dir() and all(journal.started_here(p.name) for p in out.iterdir())
    if out.is_dir() and any(out.iterdir()) and not (is_tune or started):
        raise UserError(f"--out {out}: not empty and not a tune directory; choose another")
    if not out.parent.is_dir():  # as every --out: a typo in the path is not made into folders
        raise UserError(f"{out.parent}: parent directory does not exist")
    if not out.is_dir():
        check_writable(out.parent, out)  # /proc, a read-only mount: `cannot write DIR: ...`, as every --out
        try:
            out.mkdir()
        except FileExistsError:  # another tune made it just now: its lock (DirLock) decides who runs
            pass
        except OSError as e:
            raise write_error(out, e) from None
    check_writable(out, out / journal.TRIALS)
    return out


def _written() -> set[str]:
    """The names a tune writes in its directory (what `--force` may delete)."""
    from mfdeploy.tuning.outputs import BEST_DIR
    from mfdeploy.tuning.report import PARETO_PNG, TUNE_JSON, TUNE_MD
    from mfdeploy.tuning.search import CACHE_DIR, DENSE_JSON, WORK_DIR

    return {journal.TRIALS, journal.SETTINGS, journal.LOCK, BEST_DIR, PARETO_PNG, TUNE_JSON, TUNE_MD, CACHE_DIR,
            DENSE_JSON, WORK_DIR}


__all__ = ["TuneConfig", "TuneResult", "pick_trial", "run_tune"]
