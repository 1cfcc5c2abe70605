"""MoPE's measure `Z`, and the replay that makes each module error cost a fraction of a tower forward.

Removing a module of encoder layer `i` changes nothing before it: the
embeddings and layers `0..i-1` compute what they computed for the dense
model, and inside layer `i` so does everything up to the removed module's
projection (a head's attention context entering `out_proj`, a neuron group's
activations entering `fc2`). `Replay` keeps, per calibration batch, the input
of layer `i` (the exact tensor the encoder loop hands it), the embeddings'
output and those projection inputs, then scores a module with the earlier
layers short-circuited (their `forward` returns the kept input of layer `i`)
and the attention (or the MLP) of layer `i` reduced to its last projection
applied to the kept input. The rest of the tower runs the very same ops on
the very same values as a full forward, so every error is bit-identical to
the full-forward reference (`Replay(..., enabled=False)` or
`mope.FAST_SCORING = False`), at (L - i) / L of its cost on average.

What the replay relies on is checked on the model itself rather than assumed
per family: each layer's output is the next layer's input, every layer gets
the same mask and keyword arguments, the attention returns `out_proj`'s output
first and the MLP returns `fc2`'s. Where a check fails, that tower (or layer)
is scored by full forwards, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mfdeploy.models import structure as st
from mfdeploy.models.base import Adapter
from mfdeploy.models.inputs import Batch

Index = slice | tuple[slice, slice]  # the part of a parameter a module's removal zeroes
_MISSING = object()


class Z:
    """The family's loss of the model on fixed pairs, caching the tower that a change does not touch."""

    def __init__(self, adapter: Adapter, batches: Sequence[Batch]):
        self.adapter = adapter
        self.batches = batches
        self.vision, self.text = adapter.vision_tower(), adapter.text_tower()
        self.pairs = adapter.pair_scorer()
        self.same = [b.same_image() for b in batches]  # pairs that share an image (a caption list): `Family.loss`
        self.refresh()

    @torch.inference_mode()
    def refresh(self) -> None:
        self.img = [self.vision(b.pixel_values) for b in self.batches]
        self.txt = [self.text(b.input_ids, b.attention_mask) for b in self.batches]
        self.base = self.loss()

    def embed(self, modality: str, k: int) -> torch.Tensor:
        """The embeddings of calibration batch `k` by the `modality` tower, as the model is now."""
        b = self.batches[k]
        return self.vision(b.pixel_values) if modality == "vision" else self.text(b.input_ids, b.attention_mask)

    @torch.inference_mode()
    def loss(self, changed: str | None = None, replay: Replay | None = None) -> float:
        """Z with the `changed` tower run again (through `replay`'s patches when given)."""
        total = 0.0
        for k, (b, img, txt) in enumerate(zip(self.batches, self.img, self.txt)):
            if replay is not None:
                replay.batch = k  # which batch's kept tensors the patched forwards return
            if changed == "vision":
                img = self.vision(b.pixel_values)
            elif changed == "text":
                txt = self.text(b.input_ids, b.attention_mask)
            total += float(self.pairs.loss(img, txt, same_image=self.same[k]))
        return total / len(self.batches)

    def replay(self, tower: str, enabled: bool = True) -> Replay:
        """A replay of `tower` ("vision_model" | "text_model") over this Z's batches."""
        modality = "vision" if tower == "vision_model" else "text"
        return Replay(getattr(self.adapter.model, tower), lambda: st.encoder_layers(self.adapter.model, tower),
                      lambda k: self.embed(modality, k), len(self.batches), enabled)


@torch.no_grad()
def error_without(z: Z, modality: str, tensors: list[tuple[torch.Tensor, Index]],
                  replay: Replay | None = None) -> float:
    """MoPE of the module whose parameters are zeroed by `tensors` [(param, index)], replayed when `replay`."""
    saved = [(p, idx, p[idx].clone()) for p, idx in tensors]
    try:
        for p, idx, _ in saved:
            p[idx] = 0
        return z.loss(modality, replay) - z.base
    finally:
        for p, idx, value in saved:
            p[idx] = value


def _fresh(value: Any) -> Any:
    """A kept output handed out again: tensors copied, so an in-place op downstream cannot alter the kept one."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return (_fresh(value[0]), *value[1:])
    return value


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, tuple) else value


class Replay:
    """One tower's layer inputs over the calibration batches, and the patches that replay them (module doc)."""

    def __init__(self, root: nn.Module, layers: Callable[[], Sequence[Any]], forward: Callable[[int], Any],
                 n_batches: int, enabled: bool = True):
        self.root, self._layers, self._forward, self.n = root, layers, forward, n_batches
        self.enabled = enabled
        self.replayed = enabled  # every module scored so far was replayed (False: some by full forwards)
        self.batch = 0  # set by `Z.loss` before each batch
        self.pos: int | None = None  # the layer whose inputs `x` holds
        self.x: list[Any] = []
        self.rest: list[tuple[tuple, dict]] = []  # each batch's other arguments of every layer (mask, kwargs)
        self.emb: list[Any] | None = None
        self.emb_mod: nn.Module | None = None  # the tower's `embeddings`, when it has one
        self.at: int | None = None  # the layer `ctx`, `attn`, `act` were taken in (None: not replayable)
        self.ctx: list[Any] = []
        self.attn: list[Any] = []
        self.act: list[Any] = []

    @torch.inference_mode()
    def _start(self) -> None:
        """One full forward per batch: layer 0's inputs and the embeddings' output, and the replay's checks."""
        layers, emb_mod = list(self._layers()), getattr(self.root, "embeddings", None)
        emb_mod = emb_mod if isinstance(emb_mod, nn.Module) else None
        chain, embs = _Chain(len(layers)), []
        handles = [emb_mod.register_forward_hook(lambda m, a, o: embs.append(o))] if emb_mod is not None else []
        for j, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, kw, j=j: chain.pre(j, a, kw), with_kwargs=True))
            handles.append(layer.register_forward_hook(lambda m, a, o, j=j: chain.post(j, o)))
        self.x, self.rest, ok = [], [], True
        emb: list[Any] | None = [] if emb_mod is not None else None
        try:
            for k in range(self.n):
                chain.reset()
                embs.clear()
                self._forward(k)
                ok = ok and chain.complete() and chain.first is not None
                if ok and chain.first is not None:
                    args, kw = chain.first
                    self.x.append(args[0])
                    self.rest.append((args[1:], kw))
                if emb is not None:  # replayed only where it ran once per forward
                    emb = emb + [embs[0]] if len(embs) == 1 else None
        finally:
            for h in handles:
                h.remove()
        self.emb, self.emb_mod, self.enabled, self.pos, self.at = emb, emb_mod, ok, 0, None

    @torch.inference_mode()
    def seek(self, i: int) -> None:
        """Make `x` the inputs of layer `i`, running the layers between with their weights as they are now."""
        if self.pos is None or self.pos > i:
            self._start()
        layers = self._layers()
        while self.enabled and self.pos is not None and self.pos < i:
            layer = layers[self.pos]
            self.x = [layer(x, *args, **kw) for x, (args, kw) in zip(self.x, self.rest)]
            self.pos += 1
            self.at = None

    @torch.inference_mode()
    def _capture(self, i: int) -> bool:
        """Keep layer `i`'s attention output and the inputs of its `out_proj` and `fc2`; False: not replayable."""
        self.seek(i)
        if not self.enabled:
            return False
        if self.at == i:
            return True
        layer = self._layers()[i]
        attn, mlp = layer.self_attn, layer.mlp
        seen: dict[str, list] = {name: [] for name in ("ctx", "proj", "attn", "act", "fc2", "mlp")}

        def keep(name: str, pre: bool) -> Callable:
            return (lambda m, a: seen[name].append(a[0])) if pre else (lambda m, a, o: seen[name].append(o))

        handles = [attn.out_proj.register_forward_pre_hook(keep("ctx", True)),
                   attn.out_proj.register_forward_hook(keep("proj", False)),
                   attn.register_forward_hook(keep("attn", False)),
                   mlp.fc2.register_forward_pre_hook(keep("act", True)),
                   mlp.fc2.register_forward_hook(keep("fc2", False)),
                   mlp.register_forward_hook(keep("mlp", False))]
        try:
            for x, (args, kw) in zip(self.x, self.rest):
                layer(x, *args, **kw)
        finally:
            for h in handles:
                h.remove()
        ok = (all(len(v) == self.n for v in seen.values())
              and all(_first(a) is p for a, p in zip(seen["attn"], seen["proj"]))
              and all(m is f for m, f in zip(seen["mlp"], seen["fc2"])))
        self.ctx, self.attn, self.act = (seen["ctx"], seen["attn"], seen["act"]) if ok else ([], [], [])
        self.at = i if ok else None
        return ok

    @contextmanager
    def scoring(self, i: int, part: str) -> Iterator[Replay | None]:
        """While open, the tower replays from layer `i`; yields what to hand `Z.loss` (None: full forwards).

        Args:
            i: the layer whose module is removed.
            part: "heads" (a head is zeroed in `out_proj`), "neurons" (a group in `fc2`) or "layer" (all of it).
        """
        if not self.enabled or not (self._capture(i) if part in ("heads", "neurons") else self._seek_ok(i)):
            self.replayed = False
            yield None
            return
        layers = self._layers()
        layer = layers[i]
        swaps: list[tuple[nn.Module, Any]] = []

        def swap(module: nn.Module, forward: Callable) -> None:
            swaps.append((module, module.__dict__.get("forward", _MISSING)))
            module.forward = forward  # an instance attribute: nn.Module.__call__ runs it, hooks included

        try:
            if self.emb is not None and self.emb_mod is not None:
                emb = self.emb
                swap(self.emb_mod, lambda *a, **kw: _fresh(emb[self.batch]))
            for j in range(i):  # only layer i-1's output reaches layer i: the others return without a copy
                swap(layers[j], (lambda *a, **kw: self.x[self.batch].clone()) if j == i - 1
                     else (lambda *a, **kw: self.x[self.batch]))
            if part == "heads":
                attn = layer.self_attn
                swap(attn, lambda *a, **kw: _with_first(self.attn[self.batch], attn.out_proj(self.ctx[self.batch])))
            elif part == "neurons":
                mlp = layer.mlp
                swap(layer.self_attn, lambda *a, **kw: _fresh(self.attn[self.batch]))
                swap(mlp, lambda *a, **kw: mlp.fc2(self.act[self.batch]))
            yield self
        finally:
            for module, old in reversed(swaps):
                if old is _MISSING:
                    del module.forward
                else:
                    module.forward = old

    def _seek_ok(self, i: int) -> bool:
        self.seek(i)
        return self.enabled

    def release(self) -> None:
        """Drop the tensors kept for one layer (the layer inputs stay)."""
        self.ctx, self.attn, self.act, self.at = [], [], [], None


def _with_first(kept: Any, first: torch.Tensor) -> Any:
    """`kept` (what the attention returned) with `first` in place of its output, in the same structure."""
    return (first, *kept[1:]) if isinstance(kept, tuple) else first


class _Chain:
    """Watches one tower forward: each layer ran once, in order, on the previous one's output, with the same
    other arguments (mask, keyword arguments) as layer 0. Holds layer 0's arguments and one output only."""

    def __init__(self, n_layers: int):
        self.n = n_layers
        self.reset()

    def reset(self) -> None:
        self.next, self.ok = 0, True
        self.first: tuple[tuple, dict] | None = None
        self.prev: Any = None

    def pre(self, j: int, args: tuple, kw: dict) -> None:
        if j != self.next or not args:  # out of order, or the hidden states not passed positionally
            self.ok = False
        elif j == 0:
            self.first = (args, kw)
        elif self.first is not None:
            args0, kw0 = self.first
            self.ok = self.ok and (args[0] is self.prev and len(args) == len(args0) and kw.keys() == kw0.keys()
                                   and all(a is b for a, b in zip(args[1:], args0[1:]))
                                   and all(kw[k] is kw0[k] for k in kw0))

    def post(self, j: int, out: Any) -> None:
        self.ok = self.ok and j == self.next
        self.prev, self.next = out, self.next + 1

    def complete(self) -> bool:
        return self.ok and self.n > 0 and self.next == self.n
