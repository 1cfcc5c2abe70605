"""What a pruning method receives (`PruneContext`) and returns (`MethodResult`), the same for every method, and
what the registry knows about each method (`MethodSpec`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from mfdeploy.models.base import Adapter, PrunableLayer
from mfdeploy.models.inputs import Batch, CalibSource, pair_batches
from mfdeploy.progress import NullReporter, Reporter
from mfdeploy.pruning.config import PruneConfig
from mfdeploy.pruning.masks import Masks


@dataclass
class PruneContext:
    """Everything a method may use; built once by `prune_model` after validation.

    Attributes:
        adapter: the model; a method prunes it in place (masks are folded again afterwards, harmlessly).
        layers: the prunable layers left after --include/--exclude, in model order.
        cfg: the validated configuration.
        source: calibration pairs (None when neither score nor budget needs them).
        pattern: (n, m) for N:M masks, None for unstructured.
        budget: the layer budget to use (the method's default or --budget); None for N:M and structured.
        used: calibration pairs the source really yields for `cfg.calib_samples`.
        reporter: where progress goes.
    """

    adapter: Adapter
    layers: dict[str, PrunableLayer]
    cfg: PruneConfig
    source: CalibSource | None
    pattern: tuple[int, int] | None
    budget: str | None
    used: int = 0
    reporter: Reporter = field(default_factory=NullReporter)

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on: calibration batches are moved there."""
        return next(self.adapter.model.parameters()).device

    def batches(self, n: int, batch_size: int, offset: int = 0) -> Iterator[Batch]:
        """`n` calibration pairs in batches of `batch_size`, on the model's device."""
        assert self.source is not None, "this method needs calibration pairs"
        device = self.device
        for b in pair_batches(self.adapter, self.source, n, batch_size, offset=offset):
            yield b.to(device)


@dataclass
class MethodResult:
    """What every method returns; `prune_model` turns it into the one record (prune.json).

    Attributes:
        masks: parameter name -> bool mask (True = keep) for every prunable layer; None for
            structured methods, which cut weights out instead.
        timings: seconds per step of the method (e.g. `calibration_s`, `scoring_s`).
        dense_layers: layers left dense (e.g. N:M with in_features not a multiple of M).
        calibration: entries added to the record's `calibration` (tokens seen, pairs per step).
        structure: kept heads/neurons/layers per tower (structured methods: written to pruned/).
        sparsity: the sparsity report, for methods whose result masks cannot describe (structured);
            None: computed from `masks`.
        budget_by_role: modality -> role -> fraction of that role's weights removed; None:
            computed from `masks`.
        extra: method-specific record entries (ECoFLaP's block budgets, MoPE's module errors, ...).
    """

    masks: Masks | None
    timings: dict[str, float] = field(default_factory=dict)
    dense_layers: list[str] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    structure: dict | None = None
    sparsity: dict | None = None
    budget_by_role: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A pruning method and what `prune_model` needs to know about it.

    Attributes:
        run: computes the masks (or cuts the structure) for a context.
        score: the importance score it ranks weights or modules by (recorded as `score`).
        default_budget: the layer budget used without `--budget`; None for methods that
            set their own structure (then `--budget` is refused).
        calibrates: needs calibration pairs whatever the budget (the `ecoflap` budget
            needs them for every score).
        patterns: accepts `--pattern N:M`.
    """

    run: Callable[[PruneContext], MethodResult]
    score: str
    default_budget: str | None
    calibrates: bool
    patterns: bool = True


__all__ = ["Masks", "MethodResult", "MethodSpec", "PruneContext"]
