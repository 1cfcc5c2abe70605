"""The precision gate: a runner that computes in less than fp32 serves only once it matches the fp32 towers.

The check is the one the build's artifacts passed (`mfdeploy.exporting.parity`,
`mfdeploy.quantize.gate`): the smallest per-row cosine between the runner's
embeddings and the fp32 towers' on the build's parity inputs (the real
images and captions `mfdeploy export` kept beside the towers), at full batch
and at batch 1. A tower under the threshold is refused with its cosine, in
one line: a reduced-precision runner is never used silently.

The runtime may not import the exporter or the quantizer, so the thresholds
are stated here, beside the ones they mirror.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy.artifacts.layout import PARITY_INPUTS
from mfdeploy.errors import UserError, first_line
from mfdeploy.runtime.base import BackendUnavailable, Runner

# smallest per-row cosine against the fp32 towers, by the precision the runner computes in
MIN_COSINE = {
    "f32": 0.9999,  # as the export check (ONNX Runtime vs PyTorch): the same arithmetic, another kernel order
    "bf16": 0.9995,  # 8 bits of mantissa; the bar for BF16 on real inputs
    "f16": 0.9995,
    "fp8": 0.99,  # FP8 matmuls (e4m3, 3 bits of mantissa) against the same model's fp16 towers
}
INT8_MIN_COSINE = 0.99  # as `mfdeploy.quantize.gate.MIN_COSINE`: the INT8 towers' own gate
N_INPUTS = 16  # images and captions compared (the export check's default)

Feeds = dict[str, list[tuple[str, tuple[np.ndarray, ...]]]]  # tower -> [(label, runner arguments)]


class GateRefused(BackendUnavailable):
    """A runner's embeddings fall under the gate against the fp32 towers; the message gives the cosines."""


def threshold(precision: str, variant: str) -> float:
    """The gate of a runner computing in `precision` over a build `variant` (the int8 towers have their own)."""
    return INT8_MIN_COSINE if variant == "int8" else MIN_COSINE.get(precision, MIN_COSINE["bf16"])


def parity_feeds(folder: Path | None, adapter: Callable[[], Any] | None = None,
                 n: int = N_INPUTS) -> tuple[Feeds, str]:
    """The runs the gate compares, and where their inputs came from.

    Args:
        folder: an export folder (a build's `onnx/`): its `parity_inputs.npz` is used when present (None: none).
        adapter: returns the loaded model, whose processor and tokenizer make the same kind of inputs from
            the shapes world's held-out scenes when the folder kept none.
        n: inputs wanted (at most what the file holds).

    Raises:
        BackendUnavailable: no saved inputs and no model to make them with.
    """
    path = Path(folder) / PARITY_INPUTS if folder is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                pv, ids, mask = (np.asarray(z[k])[:n] for k in ("pixel_values", "input_ids", "attention_mask"))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise UserError(f"{path}: unreadable parity inputs ({type(e).__name__}: {first_line(e)}); was it "
                            "edited? Rerun the command that wrote this folder (mfdeploy build or export)") from None
        source = f"{path.parent.name}/{PARITY_INPUTS}"
    elif adapter is not None:
        pv, ids, mask = _real_inputs(adapter(), n)
        source = f"{n} held-out shapes scenes"
    else:
        raise BackendUnavailable(f"no {PARITY_INPUTS} in {folder} to check the precision against the fp32 towers "
                                 "(re-export with `mfdeploy export`)")
    ids, mask = ids.astype(np.int64), mask.astype(np.int64)
    first = max(1, int(mask[0].sum()))  # the first caption alone, unpadded
    feeds: Feeds = {
        "vision": [(f"batch {len(pv)}", (pv,)), ("batch 1", (pv[:1],))],
        "text": [(f"batch {len(ids)}, padded", (ids, mask)), ("caption 0 alone", (ids[:1, :first], mask[:1, :first]))],
    }
    return feeds, source


def _real_inputs(adapter: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels and tokens of `n` held-out scenes of the shapes world, through the model's own preprocessing."""
    from mfdeploy.data import world

    scenes = [world.make_scene(s) for s in world.split_seeds("eval", n)]
    pv = adapter.pixel_values([sc.render() for sc in scenes]).numpy()
    ids, mask = adapter.tokenize([sc.caption() for sc in scenes])
    return pv, ids.numpy(), mask.numpy()


def min_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Smallest per-row cosine of two `[B, D]` embedding arrays; a NaN anywhere gives NaN (and fails)."""
    ref64, got64 = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    cos = (ref64 * got64).sum(-1) / (np.linalg.norm(ref64, axis=-1) * np.linalg.norm(got64, axis=-1))
    return float(np.min(cos))


def _call(runner: Runner, tower: str, args: tuple[np.ndarray, ...]) -> np.ndarray:
    return runner.embed_images(*args) if tower == "vision" else runner.embed_texts(*args)


def check(runner: Runner, reference: Runner, feeds: Feeds, min_cos: float, towers: Sequence[str], *,
          label: str, source: str, fix: str) -> dict[str, Any]:
    """Compare `runner` with the fp32 `reference` on every run of `feeds`; returns the gate record.

    Args:
        runner: the reduced-precision runner.
        reference: the fp32 towers (ONNX Runtime over the fp32 graphs, or PyTorch in fp32).
        feeds: from `parity_feeds`.
        min_cos: the threshold (`threshold`).
        towers: the towers `runner` loaded.
        label: what the refusal calls the runner, e.g. "openvino bf16 (onnx/)".
        source: where the inputs came from (for the record and the refusal).
        fix: what the user can do instead, ending the refusal.

    Raises:
        GateRefused: a tower under `min_cos` (or NaN), every failing tower with its cosine.
    """
    record: dict[str, Any] = {"precision": runner.precision, "min_cosine_required": min_cos, "inputs": source,
                              "reference": f"{reference.name} fp32"}
    failures = []
    for tower in towers:
        worst = float(np.min([min_cosine(_call(reference, tower, args), _call(runner, tower, args))
                              for _label, args in feeds[tower]]))
        passed = bool(np.isfinite(worst) and worst >= min_cos)
        record[tower] = {"min_cosine": worst, "passed": passed, "runs": len(feeds[tower])}
        if not passed:
            failures.append(f"{tower} min cosine {worst:.5f}")
    record["passed"] = not failures
    if failures:
        raise GateRefused(f"{label} refused: {'; '.join(failures)} against the fp32 towers on {source} (the gate is "
                          f">= {min_cos}); {fix}")
    return record


def gate_runner(runner: Runner, reference: Runner, folder: Path | None, adapter: Callable[[], Any] | None,
                variant: str, towers: Sequence[str], *, label: str, fix: str) -> Runner:
    """Gate `runner` and keep the record on it (`runner.gate`); closes `reference` either way.

    Args:
        runner: the reduced-precision runner.
        reference: the fp32 towers.
        folder: the export folder whose `parity_inputs.npz` to use (a build's `onnx/`; None: none).
        adapter: returns the model, to make real inputs with when the folder kept none.
        variant: "int8" for a build's quantized towers (their own, looser gate), else anything.
        towers: the towers `runner` loaded.
        label, fix: as for `check`.

    Raises:
        GateRefused: a tower under the gate (`runner` is closed first).
        BackendUnavailable: no inputs to check with.
    """
    try:
        feeds, source = parity_feeds(folder, adapter)
        runner.gate = check(runner, reference, feeds, threshold(runner.precision, variant), towers,  # type: ignore
                            label=label, source=source, fix=fix)
    except BackendUnavailable:
        runner.close()
        raise
    finally:
        reference.close()
    return runner


__all__ = ["INT8_MIN_COSINE", "MIN_COSINE", "GateRefused", "check", "gate_runner", "min_cosine",
           "parity_feeds", "threshold"]
