"""Prune stage: a registry of methods (score x layer budget, or structured), statistics, masks, records.

The Python API's `mfdeploy.prune(model, ...)` is `mfdeploy.api.prune`, built on this package.
"""

from mfdeploy.pruning.budgets import BUDGETS, layer_budgets
from mfdeploy.pruning.checks import validate
from mfdeploy.pruning.config import PruneConfig
from mfdeploy.pruning.criteria import SCORES, magnitude_score, multiflow_score, random_score, wanda_score
from mfdeploy.pruning.masks import apply_masks, compute_masks, load_masks, save_masks, sparsity_report
from mfdeploy.pruning.patterns import mask_layer, mask_nm, mask_rows, parse_pattern
from mfdeploy.pruning.record import budget_by_role, record_for_json
from mfdeploy.pruning.registry import METHODS
from mfdeploy.pruning.result import MethodResult, MethodSpec, PruneContext
from mfdeploy.pruning.run import prune_model
from mfdeploy.pruning.stats import ActivationStats, collect_stats

__all__ = [
    "BUDGETS", "METHODS", "SCORES", "ActivationStats", "MethodResult", "MethodSpec", "PruneConfig", "PruneContext",
    "apply_masks", "budget_by_role", "collect_stats", "compute_masks", "layer_budgets", "load_masks",
    "magnitude_score", "mask_layer", "mask_nm", "mask_rows", "multiflow_score", "parse_pattern", "prune_model",
    "random_score", "record_for_json", "save_masks", "sparsity_report", "validate", "wanda_score",
]
