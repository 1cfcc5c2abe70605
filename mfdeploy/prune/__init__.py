"""Prune stage: a registry of methods (score x layer budget, or structured), statistics, masks, records.

The package is callable: `mfdeploy.prune(model, ...)` is `mfdeploy.api.prune`.
"""

from mfdeploy._callable import make_callable
from mfdeploy.prune.budgets import BUDGETS, layer_budgets
from mfdeploy.prune.config import PruneConfig, validate
from mfdeploy.prune.criteria import SCORES, magnitude_score, multiflow_score, random_score, wanda_score
from mfdeploy.prune.masks import apply_masks, compute_masks, load_masks, save_masks, sparsity_report
from mfdeploy.prune.patterns import mask_layer, mask_nm, mask_rows, parse_pattern
from mfdeploy.prune.record import budget_by_role, record_for_json
from mfdeploy.prune.registry import METHODS, MethodSpec
from mfdeploy.prune.result import MethodResult, PruneContext
from mfdeploy.prune.run import prune_model
from mfdeploy.prune.stats import ActivationStats, collect_stats

__all__ = [
    "BUDGETS", "METHODS", "SCORES", "ActivationStats", "MethodResult", "MethodSpec", "PruneConfig", "PruneContext",
    "apply_masks", "budget_by_role", "collect_stats", "compute_masks", "layer_budgets", "load_masks",
    "magnitude_score", "mask_layer", "mask_nm", "mask_rows", "multiflow_score", "parse_pattern", "prune_model",
    "random_score", "record_for_json", "save_masks", "sparsity_report", "validate", "wanda_score",
]

make_callable(__name__, "prune")
