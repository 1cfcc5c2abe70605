"""Zero-shot classification and retrieval metrics: evaluate a model, compare pruned with dense."""

from mfdeploy.eval.datasets import ClassTask, EvalSet, folder_set, pairs_set, resolve_data, shapes_suite
from mfdeploy.eval.evaluate import (
    BACKENDS,
    dense_reference,
    embed_images,
    embed_texts,
    evaluate,
    evaluate_model,
    evaluate_with_retention,
    open_runner,
)
from mfdeploy.eval.metrics import RETRIEVAL_KEYS, retention, retrieval_recall, zero_shot_accuracy
from mfdeploy.eval.prepare import Prepared, clear_cache, prepare
from mfdeploy.eval.report import check_json_target, write_result

__all__ = [
    "BACKENDS",
    "RETRIEVAL_KEYS",
    "ClassTask",
    "check_json_target",
    "EvalSet",
    "Prepared",
    "clear_cache",
    "dense_reference",
    "embed_images",
    "embed_texts",
    "evaluate",
    "evaluate_model",
    "evaluate_with_retention",
    "folder_set",
    "open_runner",
    "pairs_set",
    "prepare",
    "resolve_data",
    "retention",
    "retrieval_recall",
    "shapes_suite",
    "write_result",
    "zero_shot_accuracy",
]
