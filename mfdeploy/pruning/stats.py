"""Activation statistics: per-input-feature running mean of x^2, gathered by forward hooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mfdeploy.errors import UserError
from mfdeploy.models.base import Adapter, PrunableLayer
from mfdeploy.models.inputs import Batch


class ActivationStats:
    """One float32 accumulator per layer: the running mean of x_j^2 over calibration tokens.

    Text padding tokens (attention_mask == 0) are excluded; every image token
    (patches and CLS) counts. A family whose text tower attends to padding
    (SigLIP) gives an all-ones mask, so its padding counts as the model
    computes it. Memory is O(in_features) per layer.
    """

    def __init__(self, layers: dict[str, PrunableLayer]):
        self.layers = layers
        # on the weight's device: the hooks add activations from wherever the model runs
        self.mean_sq = {n: torch.zeros(l.module.in_features, dtype=torch.float32, device=l.module.weight.device)
                        for n, l in layers.items()}
        self.tokens = dict.fromkeys(layers, 0)
        self._text_mask: torch.Tensor | None = None  # [B, L] bool, set around each text forward
        self.modalities = {l.modality for l in layers.values()}

    def _update(self, name: str, x: torch.Tensor) -> None:
        x = x.detach()
        if self.layers[name].modality == "text" and self._text_mask is not None:
            x = x[self._text_mask.to(x.device)]  # [N_valid, in]: drop padding tokens
        else:
            x = x.reshape(-1, x.shape[-1])  # [B*T, in]
        n = x.shape[0]
        if n == 0:
            return
        batch_sq = x.float().pow(2).sum(dim=0)  # [in]
        total = self.tokens[name] + n
        # running mean: the scale does not depend on how many batches were seen
        self.mean_sq[name].mul_(self.tokens[name] / total).add_(batch_sq, alpha=1.0 / total)
        self.tokens[name] = total

    def norms(self) -> dict[str, torch.Tensor]:
        """`a_j = sqrt(mean x_j^2)` per layer, `[in_features]` float32."""
        return {n: m.sqrt() for n, m in self.mean_sq.items()}

    @contextmanager
    def hooks(self) -> Iterator[ActivationStats]:
        """Register the forward hooks; they are removed in `finally`, whatever happens."""
        handles = []
        try:
            for name, layer in self.layers.items():
                handles.append(layer.module.register_forward_hook(self._hook(name)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            self._update(name, inputs[0])

        return hook

    @torch.inference_mode()
    def observe(self, batch: Batch, vision: nn.Module, text: nn.Module) -> None:
        """Forward one batch of pairs through both towers (inside `hooks()`); a tower without observed
        layers is skipped."""
        if "vision" in self.modalities:
            vision(batch.pixel_values)
        if "text" not in self.modalities:
            return
        self._text_mask = batch.attention_mask.bool()
        try:
            text(batch.input_ids, batch.attention_mask)
        finally:
            self._text_mask = None


def collect_stats(adapter: Adapter, layers: dict[str, PrunableLayer], batches: Iterable[Batch],
                  progress=None) -> ActivationStats:
    """Run calibration batches through both towers and return the statistics.

    Args:
        adapter: the model.
        layers: the prunable layers to observe.
        batches: calibration image-caption batches.
        progress: optional callable(n_pairs) called after each batch (a reporter task's advance).
    """
    stats = ActivationStats(layers)
    vision, text = adapter.vision_tower(), adapter.text_tower()
    with stats.hooks():
        for batch in batches:
            stats.observe(batch, vision, text)
            if progress is not None:
                progress(len(batch))
    for name, mean_sq in stats.mean_sq.items():  # NaN scores would sort by position: masks in column order
        if not bool(torch.isfinite(mean_sq).all()):
            raise UserError(f"the calibration activations entering {name} are not finite (NaN or infinite): check "
                            "the calibration inputs, or prune a float32 copy of the model (float16 can overflow)")
    return stats
