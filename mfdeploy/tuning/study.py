"""The Optuna study behind `mfdeploy tune`'s search order (see `mfdeploy.tuning.search`): a brute-force walk of
the space's grid, rebuilt at every start from the journal so that a finished trial is never proposed again.

Why `BruteForceSampler`: the space is a small grid of categorical choices whose every point costs minutes to
measure, where a model-based sampler (TPE, NSGA-II) needs more trials than the budget holds before it beats a
shuffled grid, and re-proposes points that already finished.
"""

from __future__ import annotations

import warnings
from typing import Any

from mfdeploy.tuning.records import Record
from mfdeploy.tuning.space import FIXED_BUDGET, Candidate, Space, pattern_ratio


def make_study(records: list[Record], seeds: list[Candidate], space: Space, seed: int):
    """A two-objective study (retention, speed-up) holding `records` as finished trials, `seeds` enqueued first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the trials speak for themselves: tune prints one line each
    with warnings.catch_warnings():  # "experimental" since 3.1: the grid walk tune relies on is its whole job
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.BruteForceSampler(seed=seed)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    for record in records:  # what finished before: the sampler never proposes it again
        cand = Candidate(**record["config"])
        params, dists = optuna_params(cand, space)
        state = optuna.trial.TrialState.COMPLETE if record["state"] == "complete" else \
            optuna.trial.TrialState.PRUNED
        values = [record["quality"]["retention"], record["speed"]["speedup"]] if state.name == "COMPLETE" else None
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values, state=state,
                                                  user_attrs={"key": record["key"]}))
    for cand in seeds:
        study.enqueue_trial(optuna_params(cand, space)[0], skip_if_exists=True)
    return study


def suggest(trial, space: Space) -> Candidate:
    """The candidate an Optuna trial draws (define-by-run: MoPE and ECoFLaP draw no budget or pattern)."""
    method = trial.suggest_categorical("method", space.methods)
    pattern = budget = None
    if method not in FIXED_BUDGET:
        pattern = trial.suggest_categorical("pattern", space.patterns)
        if pattern is None:
            budget = trial.suggest_categorical("budget", space.budgets)
    ratio = trial.suggest_categorical("ratio", space.ratios) if pattern is None else pattern_ratio(pattern)
    steps = trial.suggest_categorical("distill_steps", space.distill_steps)
    precision = trial.suggest_categorical("precision", space.precisions)
    return Candidate(method, ratio, precision, budget, pattern, steps)


def optuna_params(cand: Candidate, space: Space) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Optuna parameters `_suggest` would draw for `cand`, with their distributions."""
    from optuna.distributions import CategoricalDistribution as C

    params: dict[str, Any] = {"method": cand.method}
    dists: dict[str, Any] = {"method": C(space.methods)}
    if cand.method not in FIXED_BUDGET:
        params["pattern"], dists["pattern"] = cand.pattern, C(space.patterns)
        if cand.pattern is None:
            params["budget"], dists["budget"] = cand.budget, C(space.budgets)
    if cand.pattern is None:
        params["ratio"], dists["ratio"] = cand.ratio, C(space.ratios)
    params["distill_steps"], dists["distill_steps"] = cand.distill_steps, C(space.distill_steps)
    params["precision"], dists["precision"] = cand.precision, C(space.precisions)
    return params, dists


def off_space(record: Record, space: Space) -> str | None:
    """Why a journal record is not a trial of `space` (a configuration it cannot hold, or a key that is not its
    configuration's), or None. Such a line would stop the study with a traceback; tune skips it instead."""
    try:
        cand = Candidate(**record["config"])
        if cand.key != record["key"]:
            return f"its key {record['key']!r} is not its configuration's ({cand.key!r})"
        params, dists = optuna_params(cand, space)
        for name, value in params.items():
            dists[name].to_internal_repr(value)  # ValueError: not one of the space's choices
    except (TypeError, ValueError, AttributeError) as e:
        return f"not a point of this tune's space ({e})"
    return None


__all__ = ["make_study", "off_space", "optuna_params", "suggest"]
