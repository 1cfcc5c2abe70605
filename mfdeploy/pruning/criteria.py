"""Pruning criteria: pure functions `score(weight, act_norm, generator) -> scores` (higher = keep)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Generator | None"], torch.Tensor]


def random_score(weight: torch.Tensor, act: torch.Tensor | None, gen: torch.Generator | None) -> torch.Tensor:
    """i.i.d. uniform scores (seeded).

    Drawn from `gen` (a CPU generator) and moved to the weight's device, so the
    same seed gives the same scores, and masks, on every device.
    """
    return torch.rand(weight.shape, generator=gen, dtype=torch.float32).to(weight.device)


def magnitude_score(weight: torch.Tensor, act: torch.Tensor | None, gen: torch.Generator | None) -> torch.Tensor:
    """`|W|`."""
    return weight.detach().float().abs()


def wanda_score(weight: torch.Tensor, act: torch.Tensor | None, gen: torch.Generator | None) -> torch.Tensor:
    """Wanda: `|W_ij| * a_j` with `a_j` the input feature's activation norm."""
    assert act is not None
    return weight.detach().float().abs() * act.to(weight.device, torch.float32)[None, :]  # [out, in]


def multiflow_score(weight: torch.Tensor, act: torch.Tensor | None, gen: torch.Generator | None) -> torch.Tensor:
    """MULTIFLOW information flow (eq. 6): `S_ij = imp_out_i * |W_ij| * imp_in_j`.

    With `A_ij = |W_ij| * a_j`, `imp_out_i = mean_j A_ij` (how much signal
    neuron i emits) and `imp_in_j = mean_i A_ij` (how much input j feeds).
    """
    assert act is not None
    w = weight.detach().float().abs()  # [out, in]
    a = w * act.to(weight.device, torch.float32)[None, :]  # [out, in]
    imp_out = a.mean(dim=1)  # [out]
    imp_in = a.mean(dim=0)  # [in]
    return imp_out[:, None] * w * imp_in[None, :]


@dataclass(frozen=True)
class Score:
    """A score: its function, whether it needs activation statistics, and how it compares weights.

    `compare` is "layer" (the layer's lowest scores go) or "row" (each output
    row loses its share: Wanda's comparison group), at whatever layer budget
    the budget step assigns.
    """

    fn: ScoreFn
    needs_activations: bool
    compare: str = "layer"


SCORES: dict[str, Score] = {
    "random": Score(random_score, False),
    "magnitude": Score(magnitude_score, False),
    "wanda": Score(wanda_score, True, "row"),
    "multiflow": Score(multiflow_score, True),
}
