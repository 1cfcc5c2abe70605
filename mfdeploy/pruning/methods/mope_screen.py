"""Screening MoPE's module errors with a faster fp32 GEMM, and deciding every close call by the exact replay.

On some CPUs PyTorch's fp32 `linear` (MKL's sgemm) runs far below the
machine's peak while oneDNN's runs near it (`mfdeploy.runtime.onednn`), and
`linear` is 80-90% of a scoring run. A screened layer scores each of its
modules once with every plain `nn.Linear` of the model run by oneDNN
(`torch.ops.mkldnn._linear_pointwise`). Those errors differ from the exact
ones (the replay's, bit-identical to a full forward through PyTorch's own
`linear`) by rounding only: at most 2 float32 ulps of the module's loss on
ViT-B/32 with random weights, 16 on the bundled CLIP (whose loss is small), 2
on the bundled SigLIP, over every module (benchmarks/mope_screen_spread.py).

A layer keeps its k highest-error heads (and neuron groups), so only the set
matters, not the values. Each screened error stands for an interval around
it (`Bounds`: +- `ULPS` float32 ulps of its loss, or `SPREAD` times the
largest difference the tower has shown, whichever is wider), an exact one for
a point. A module is surely kept when fewer than k others could reach its
error, and surely dropped when k others surely exceed it; the modules left
(the close calls at the boundary, a few per tower) are scored again exactly,
and the layer keeps the sure ones plus the best of those by exact error, ties
broken by index as the reference's stable sort does. That is the set the
reference keeps whenever every screened error lies within its interval, so
the masks are then the reference's bit for bit.

Whether the rounding stays that small is checked, not assumed: each layer
first computes the loss of the model as it is (no module removed) both ways,
and every close call compares its two values. A difference beyond half the
interval ends screening for the rest of that tower, and the layer is scored
again exactly. Screening runs only on float32 CPU models and only where
oneDNN's GEMM is measured faster than `linear` (`onednn.worth_it`, once per
process).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy
import torch
from torch import nn

from mfdeploy.models import structure as st
from mfdeploy.progress import Advance
from mfdeploy.pruning.methods.mope_replay import Index, Replay, Z, error_without
from mfdeploy.runtime import onednn

ULPS = 64  # a screened error's interval is +- at least ULPS float32 ulps of its loss,
SPREAD = 8  # and at least SPREAD times the largest screened-vs-exact difference the tower has shown


def supported(model: nn.Module) -> bool:
    """The model is one screening can run: float32 on the CPU, with oneDNN's linear in this build of PyTorch."""
    return onednn.float32_cpu(model)


class Distrust(Exception):
    """A screened error lay further from its exact value than half its interval."""


class Bounds:
    """The interval each screened error stands for, and the check of every measured screened-vs-exact difference.

    Args:
        base: the dense model's loss, which every error is relative to.
    """

    def __init__(self, base: float):
        self.base = base
        self.seen = 0.0  # the largest difference measured so far

    def margin(self, error: float) -> float:
        """Half the width of `error`'s interval: `ULPS` float32 ulps of its loss, or `SPREAD` times `seen`."""
        loss = max(abs(self.base), abs(self.base + error), 1e-30)
        return max(ULPS * math.ulp(loss) * 2.0 ** 29, SPREAD * self.seen)  # float64 ulp * 2**29: float32's

    def observe(self, screened: float, exact: float) -> None:
        """Check one measured difference (raises `Distrust` beyond half the interval), then remember it."""
        diff, allowed = abs(screened - exact), self.margin(exact) / 2
        if not diff <= allowed:
            raise Distrust(f"a screened error was {diff:.3g} from its exact value (at most {allowed:.3g} allowed)")
        self.seen = max(self.seen, diff)


class Screen(Bounds):
    """Screening of one tower's layers: on while `on`; counts what it screened and what it scored again."""

    def __init__(self, model: nn.Module, wanted: bool | None, base: float):
        super().__init__(base)
        self.model = model
        able = supported(model)
        self.on = bool(able and (onednn.worth_it() if wanted is None else wanted))
        self.off = None if self.on else (  # why screening did not run (prune.json says it, not only "screened": 0)
            "not a float32 CPU model, or no oneDNN linear in this PyTorch" if not able
            else "turned off" if wanted is False else "oneDNN's GEMM measured no faster than linear here")
        self.stopped: str | None = None  # why screening ended early, where it did
        self.screened = 0  # module errors screened
        self.rescored = 0  # of those, scored again exactly (close calls)

    @contextmanager
    def kernels(self) -> Iterator[None]:
        """While open (and screening is on), every nn.Linear of the model runs through oneDNN."""
        if not self.on:
            yield
            return
        with onednn.swapped(self.model):
            yield

    def stop(self, why: str) -> None:
        self.on, self.stopped = False, why

    def record(self) -> dict:
        return {"screened": self.screened, "rescored_exactly": self.rescored, "largest_difference": self.seen,
                "stopped": self.stopped, "off": self.off}


def top_k(values: list[float], screened: set[int], k: int, bounds: Bounds,
          exact: Callable[[Sequence[int]], list[float]]) -> list[int]:
    """The indices of the `k` highest errors by the exact values, as a stable descending sort picks them.

    Args:
        values: each module's error; those in `screened` are screened, the others exact.
        screened: indices whose value is screened; the close calls among them are scored again by `exact`, their
            values replaced and their indices removed (both in place).
        k: how many to keep.
        bounds: the intervals of screened values, and the check of each difference measured.
        exact: the exact errors of the given indices.

    Returns:
        The kept indices, ascending: `reference_top_k` of the exact values, whenever each screened value lies
        within its interval of the exact one.

    Raises:
        Distrust: a close call's screened value lay beyond half its interval from its exact one, or a value is not
            finite.
    """
    n = len(values)
    if not all(math.isfinite(v) for v in values):  # the reference's sort puts NaN first: leave it to that sort
        raise Distrust("an error is not a finite number")
    # compared as the reference's sort compares them, in float32: rounding to nearest keeps order (monotonic), so
    # an exact value within [lo, hi] rounds within [f32(lo), f32(hi)], and ties in float32 go by index as there
    lo = [_f32(v - (bounds.margin(v) if j in screened else 0.0)) for j, v in enumerate(values)]
    hi = [_f32(v + (bounds.margin(v) if j in screened else 0.0)) for j, v in enumerate(values)]
    sure_in = [j for j in range(n) if sum(hi[m] >= lo[j] for m in range(n) if m != j) < k]
    sure_out = {j for j in range(n) if sum(lo[m] > hi[j] for m in range(n) if m != j) >= k}
    close = [j for j in range(n) if j not in sure_out and j not in sure_in]
    again = [j for j in close if j in screened]
    if again:
        for j, e in zip(again, exact(again)):
            bounds.observe(values[j], e)
            values[j] = e
            screened.discard(j)
    ranked = sorted(close, key=lambda j: (-_f32(values[j]), j))
    return sorted(sure_in + ranked[: k - len(sure_in)])


def reference_top_k(values: list[float], k: int) -> list[int]:
    """The reference's choice from exact errors: a stable descending sort of them as a float32 tensor, ascending."""
    return sorted(torch.tensor(values).argsort(descending=True, stable=True)[:k].tolist())


def _f32(x: float) -> float:
    return float(numpy.float32(x))


def _removal(layer: st.EncoderLayer, part: str, j: int, group: int) -> list[tuple[torch.Tensor, Index]]:
    """What removing head `j` (part "heads") or neuron group `j` ("neuron_groups") of `layer` zeroes."""
    if part == "heads":
        hd = st.head_dim(layer.self_attn)
        return [(layer.self_attn.out_proj.weight, (slice(None), slice(j * hd, (j + 1) * hd)))]
    inter = layer.mlp.fc1.out_features
    return [(layer.mlp.fc2.weight, (slice(None), slice(j * group, min((j + 1) * group, inter))))]


_REPLAY_PART = {"heads": "heads", "neuron_groups": "neurons"}


def width_errors(z: Z, replay: Replay, screen: Screen, modality: str, i: int, layer: st.EncoderLayer, group: int,
                 advance: Advance) -> dict:
    """MoPE of every head and neuron group of layer `i` (its earlier layers already cut), screened where `screen`
    is on: then "screened" lists, per part, the errors that are screened values (`mope_screen`)."""
    counts = {"heads": layer.self_attn.q_proj.out_features // st.head_dim(layer.self_attn),
              "neuron_groups": math.ceil(layer.mlp.fc1.out_features / group)}
    if screen.on:  # the model as it is now, through PyTorch's kernels and through oneDNN's: the losses must agree
        with replay.scoring(i, "heads") as r:
            now = error_without(z, modality, [], r)
            with screen.kernels():
                fast = error_without(z, modality, [], r)
        try:
            screen.observe(fast, now)
        except Distrust as e:
            screen.stop(f"{modality} layer {i}, the model's loss itself: {e}")
    errors: dict = {}
    for part, n in counts.items():
        # the replay keeps its tensors on entering, through PyTorch's own kernels; oneDNN's run inside only
        with replay.scoring(i, _REPLAY_PART[part]) as r, screen.kernels():
            errors[part] = []
            for j in range(n):
                errors[part].append(error_without(z, modality, _removal(layer, part, j, group), r))
                advance(1)
    if screen.on:
        errors["screened"] = {part: list(range(n)) for part, n in counts.items()}
        screen.screened += sum(counts.values())
    replay.release()
    return errors


class LayerChoice:
    """Choosing one layer's heads or neuron groups from its errors, scoring close calls again exactly."""

    def __init__(self, z: Z, replay: Replay, screen: Screen, modality: str, i: int, layer: st.EncoderLayer,
                 group: int):
        self.z, self.replay, self.screen, self.modality = z, replay, screen, modality
        self.i, self.layer, self.group = i, layer, group

    def exact(self, part: str, indices: Sequence[int]) -> list[float]:
        with self.replay.scoring(self.i, _REPLAY_PART[part]) as r:
            out = [error_without(self.z, self.modality, _removal(self.layer, part, j, self.group), r)
                   for j in indices]
        self.screen.rescored += len(out)
        return out

    def choose(self, errors: dict, part: str, k: int) -> list[int]:
        """The `k` modules of `part` with the highest errors, ascending; `errors` gets the exact values it used."""
        values: list[float] = errors[part]
        screened = set(errors.get("screened", {}).get(part, []))
        if screened and self.screen.stopped is None:
            try:
                kept = top_k(values, screened, k, self.screen, lambda idx: self.exact(part, idx))
            except Distrust as e:
                self.screen.stop(f"{self.modality} layer {self.i}: {e}")
        if screened and self.screen.stopped is not None:  # screening distrusted: every value again, exactly
            values[:] = self.exact(part, range(len(values)))
            screened.clear()
        if screened:
            errors["screened"][part] = sorted(screened)
            return kept
        errors.get("screened", {}).pop(part, None)
        if not errors.get("screened", True):
            del errors["screened"]
        return reference_top_k(values, k)


__all__ = ["SPREAD", "ULPS", "Bounds", "Distrust", "LayerChoice", "Screen", "reference_top_k", "supported", "top_k",
           "width_errors"]
