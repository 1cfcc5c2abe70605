"""Calibration inputs of each tower, made from image-caption pairs by the model's own processor and tokenizer.

The same sources as the prune stage (`--calib shapes|PAIRS.jsonl`): the
shapes world's calibration seeds, or the first pairs of a JSONL file. The
parity gate uses other inputs (the eval split, see `gate.py`), so the
graphs are never checked on the data they were calibrated on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mfdeploy.errors import UserError
from mfdeploy.models.inputs import CalibSource, pair_batches

Feed = dict[str, np.ndarray]


def calibration_feeds(adapter, source: CalibSource, n: int, batch_size: int = 32,
                      warn: Callable[[str], None] | None = None) -> tuple[dict[str, list[Feed]], int]:
    """Model inputs of `n` calibration pairs, per tower, in batches.

    Args:
        adapter: the model whose processor and tokenizer make the inputs.
        source: where the pairs come from.
        n: pairs requested (a file with fewer yields all it has, with a warning).
        batch_size: pairs per calibration batch.
        warn: called with a one-line warning when the source has fewer than `n` pairs.

    Returns:
        `({"vision": [{"pixel_values": ...}], "text": [{"input_ids", "attention_mask"}]}, pairs used)`: each
        tower's feeds hold the inputs its graph takes (`adapter.tower_inputs`; SigLIP's text: input_ids alone),
        tokenized as the model's family does (SigLIP: padded to the fixed length).
    """
    if n <= 0 or batch_size <= 0:
        raise UserError(f"--calib-samples must be positive (got {n})")
    feeds: dict[str, list[Feed]] = {"vision": [], "text": []}
    used = 0
    takes = adapter.tower_inputs["text"]
    for batch in pair_batches(adapter, source, n, batch_size):
        feeds["vision"].append({"pixel_values": batch.pixel_values.numpy()})
        text = {"input_ids": batch.input_ids.numpy(), "attention_mask": batch.attention_mask.numpy()}
        feeds["text"].append({k: text[k] for k in takes})
        used += len(batch)
    if used < n and warn is not None:
        warn(f"{source.describe()} holds {used} calibration pairs, fewer than --calib-samples {n}: using {used}")
    return feeds, used


def feed_reader(feeds: list[Feed]) -> Any:
    """An `onnxruntime.quantization.CalibrationDataReader` over prepared feeds (imported lazily)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> Feed | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

        def get_first(self) -> Feed | None:  # ModelOpt's readers also have this (a test run of the graph)
            return feeds[0] if feeds else None

    return _Reader()
