"""Every pruning method, by name: the one table `--method` is looked up in.

A method is a function `run(ctx: PruneContext) -> MethodResult` plus a few
facts about it (`MethodSpec`). Adding one takes one file and one line:

    # mfdeploy/pruning/methods/mine.py
    def prune_mine(ctx: PruneContext) -> MethodResult:
        ...                                   # masks for ctx.layers at ctx.cfg.ratio
        return MethodResult(masks=masks, timings={"scoring_s": dt})

    # here
    "mine": MethodSpec(prune_mine, score="mine", default_budget="uniform", calibrates=False),

`prune_model` validates the configuration against the spec, builds the
context (layers, calibration source, budget, reporter), runs the method,
folds the masks into the model and writes the record: no method writes its
own. Score-based (unstructured) methods share one implementation
(`methods/unstructured.py`) and take any layer budget (`--budget`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from mfdeploy.pruning.methods.mope import prune_mope
from mfdeploy.pruning.methods.unstructured import prune_unstructured
from mfdeploy.pruning.result import MethodResult, MethodSpec, PruneContext


def _score(name: str) -> Callable[[PruneContext], MethodResult]:
    return partial(prune_unstructured, name)


METHODS: dict[str, MethodSpec] = {
    "random": MethodSpec(_score("random"), "random", "uniform", calibrates=False),
    "magnitude": MethodSpec(_score("magnitude"), "magnitude", "uniform", calibrates=False),
    "wanda": MethodSpec(_score("wanda"), "wanda", "uniform", calibrates=True),
    "multiflow": MethodSpec(_score("multiflow"), "multiflow", "modality", calibrates=True),
    "ecoflap": MethodSpec(_score("wanda"), "wanda", "ecoflap", calibrates=True, patterns=False),
    "mope": MethodSpec(prune_mope, "mope", None, calibrates=True, patterns=False),
}


def needs_calibration(spec: MethodSpec, budget: str | None) -> bool:
    """Whether a run needs calibration pairs: the score's statistics or the ECoFLaP budget's loss."""
    return spec.calibrates or budget == "ecoflap"


__all__ = ["METHODS", "MethodSpec", "needs_calibration"]
