"""Prune stage: activation statistics, criteria, layer budgets, N:M patterns, masks.

The package is callable: `mfdeploy.prune(model, ...)` is `mfdeploy.api.prune`.
"""

from mfdeploy._callable import make_callable
from mfdeploy.prune.budgets import layer_budgets
from mfdeploy.prune.criteria import METHODS, magnitude_score, multiflow_score, random_score, wanda_score
from mfdeploy.prune.masks import apply_masks, compute_masks, load_masks, save_masks, sparsity_report
from mfdeploy.prune.patterns import mask_layer, mask_nm, mask_rows, parse_pattern
from mfdeploy.prune.run import PruneConfig, prune_model, run_prune
from mfdeploy.prune.stats import ActivationStats, collect_stats

__all__ = [
    "METHODS", "ActivationStats", "PruneConfig", "apply_masks", "collect_stats", "compute_masks", "layer_budgets",
    "load_masks", "magnitude_score", "mask_layer", "mask_nm", "mask_rows", "multiflow_score", "parse_pattern",
    "prune_model", "random_score", "run_prune", "save_masks", "sparsity_report", "wanda_score",
]

make_callable(__name__, "prune")
