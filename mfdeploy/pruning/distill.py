"""Recovery after pruning: distillation from the dense model, with the sparsity held fixed.

Loss = the divergence of the student's pair probabilities from the
teacher's, measured with the model family's own loss (`Family.loss` with the
teacher's logits as soft targets, minus its value at the teacher: for CLIP
the KL of the softmax over texts and over images, for SigLIP the binary KL of
every pair's sigmoid), both scored with the teacher's logit scale (and bias),
+ MSE between student and teacher embeddings of each tower (L2-normalised).

For masked (unstructured, N:M) models every masked weight's gradient is
multiplied by its mask and the weight is masked again after each optimiser
step, so pruned weights stay exactly zero: the sparsity, the per-layer counts
and the N:M pattern do not move, and `masks.safetensors` is the one pruning
wrote. Structured (MoPE) models have nothing to hold: the cut weights are gone.

A held-out slice of calibration pairs is never trained on; its loss is
measured every `eval_every` steps. When it has not improved on its best for
`PATIENCE` evaluations in a row, training stops and the weights of the best
evaluation are put back (recorded as `stopped_early`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mfdeploy.errors import UserError
from mfdeploy.models.family import PairScorer
from mfdeploy.models.inputs import Batch, CalibSource
from mfdeploy.models.registry import family_of_model
from mfdeploy.pruning.masks import param_name
from mfdeploy.pruning.result import PruneContext

HELD_OUT_OFFSET = 900_000  # shapes: held-out seeds, past those pruning (offset 0) and MoPE's Z (500_000) read
HELD_OUT_PAIRS = 64  # shapes: pairs held out
MIN_PAIRS = 8  # a file or in-memory source: fewer cannot give both a training set and a held-out slice
PATIENCE = 2  # evaluations without a new best before stopping
PARAMS = ("all", "prunable")  # what trains: every weight but the logit scale and bias, or only the pruned layers'
LOSS = "KL(teacher || student pair probabilities, the family's scoring) + MSE(normalised embeddings)"
FROZEN = ("logit_scale", "logit_bias")  # the loss scores both models with the teacher's: they would not train

Embeds = tuple[torch.Tensor, torch.Tensor]


def _embed(model: nn.Module, b: Batch) -> Embeds:
    """Normalised embeddings of a batch through the family's own towers (what export and serving compute)."""
    family = family_of_model(model)
    return family.vision_tower(model)(b.pixel_values), family.text_tower(model)(b.input_ids, b.attention_mask)


def loss_fn(student: Embeds, teacher: Embeds, pairs: PairScorer) -> torch.Tensor:
    """The distillation loss of one batch (student and teacher normalised embeddings).

    Args:
        student, teacher: `(image_embeds, text_embeds)`, each `[B, D]`.
        pairs: the family's pair score with the teacher's logit scale and bias.
    """
    (s_img, s_txt), (t_img, t_txt) = student, teacher
    t_logits = pairs.logits(t_img, t_txt)  # [B, B]
    # the family's loss against the teacher's soft targets, less its floor (the teacher's own): a KL, 0 at the teacher
    kl = pairs.loss(s_img, s_txt, t_logits) - pairs.family.loss(t_logits, t_logits)
    return kl + F.mse_loss(s_img, t_img) + F.mse_loss(s_txt, t_txt)


@torch.no_grad()
def _held_out_loss(student: nn.Module, batches: Sequence[Batch], targets: Sequence[Embeds],
                   pairs: PairScorer) -> float:
    """Mean loss over the held-out batches, weighted by pairs."""
    was_training = student.training
    student.eval()
    total = sum(loss_fn(_embed(student, b), t, pairs).item() * len(b) for b, t in zip(batches, targets))
    student.train(was_training)
    return total / sum(len(b) for b in batches)


class _MaskHold:
    """Keeps masked weights at exactly zero: gradients masked while training, weights masked after each step."""

    def __init__(self, params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]):
        self.pairs = [(params[n], m.to(device=params[n].device, dtype=params[n].dtype)) for n, m in masks.items()
                      if params[n].requires_grad]
        self.hooks = [p.register_hook(lambda g, keep=keep: g * keep) for p, keep in self.pairs]

    @torch.no_grad()
    def reapply(self) -> None:
        for p, keep in self.pairs:
            p.mul_(keep)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def distill(student: nn.Module, teacher: nn.Module, train: Sequence[Batch], held_out: Sequence[Batch], steps: int,
            lr: float = 1e-4, *, masks: dict[str, torch.Tensor] | None = None,
            trainable: Callable[[str], bool] | None = None, eval_every: int | None = None,
            patience: int = PATIENCE, seed: int = 0, progress: Callable[[int], None] | None = None) -> dict:
    """Train `student` in place against `teacher` for up to `steps` AdamW steps over `train` (cycled).

    Args:
        student: the pruned model, trained in place.
        teacher: the dense model (not trained).
        train: calibration batches to train on, on the models' device.
        held_out: batches never trained on: their loss decides early stopping.
        steps: optimiser steps asked for.
        lr: AdamW learning rate (no weight decay: it would pull kept weights, never masked ones, to zero).
        masks: parameter name -> bool mask (True = keep): those weights keep their zeros exactly.
        trainable: parameter name -> whether it trains (default: all but `logit_scale` and `logit_bias`,
            which the loss does not use: it takes the teacher's).
        eval_every: steps between held-out evaluations (default: a tenth of `steps`, at most 25).
        patience: evaluations without a new best before stopping; 0 never stops early (the best
            weights are still put back at the end).
        seed: seeds torch before training.
        progress: called with 1 after each step.

    Returns:
        The record (prune.json's `distill`): losses, held-out curve, early stop, time.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    eval_every = eval_every or max(1, min(25, steps // 10))
    params = dict(student.named_parameters())
    wanted = trainable or (lambda name: True)
    chosen = {n for n in params if wanted(n) and not n.endswith(FROZEN)}
    flags = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in chosen)
    hold = _MaskHold(params, masks or {})
    teacher.eval()
    with torch.no_grad():
        targets = [_embed(teacher, b) for b in train]
        held_targets = [_embed(teacher, b) for b in held_out]
    pairs = PairScorer.of(family_of_model(teacher), teacher)
    opt = torch.optim.AdamW([params[n] for n in sorted(chosen)], lr=lr, weight_decay=0.0)
    best = _held_out_loss(student, held_out, held_targets, pairs)
    curve = [{"step": 0, "train_loss": None, "held_out_loss": best}]
    best_step, bad, first, window = 0, 0, None, []
    best_state = {n: params[n].detach().clone() for n in chosen}  # put back if no step improves on the pruned model
    stop_reason = None
    student.train()
    try:
        for step in range(1, steps + 1):
            i = (step - 1) % len(train)
            loss = loss_fn(_embed(student, train[i]), targets[i], pairs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hold.reapply()
            window.append(loss.item())  # .item(), not float(): the loss still requires grad
            first = window[0] if first is None else first
            if progress is not None:
                progress(1)
            if step % eval_every and step != steps:
                continue
            held = _held_out_loss(student, held_out, held_targets, pairs)
            curve.append({"step": step, "train_loss": sum(window) / len(window), "held_out_loss": held})
            window = []
            if held < best:
                best, best_step, bad = held, step, 0
                best_state = {n: params[n].detach().clone() for n in chosen}
            else:
                bad += 1
                if patience and bad >= patience:
                    stop_reason = (f"held-out loss {held:.4g} at step {step} has not improved on its best "
                                   f"({best:.4g}, step {best_step}) for {patience} evaluations")
                    break
    finally:
        hold.remove()
        for n, p in params.items():
            p.requires_grad_(flags[n])
        student.eval()
    ran = curve[-1]["step"]
    if best_step != ran:  # a later evaluation was worse: put the best weights back (step 0: the pruned model)
        with torch.no_grad():
            for n in chosen:
                params[n].copy_(best_state[n])
    return {
        "steps": steps, "steps_run": ran, "lr": lr, "optimizer": "AdamW (no weight decay)",
        "train_pairs": sum(len(b) for b in train), "held_out_pairs": sum(len(b) for b in held_out),
        "batch_size": len(train[0]), "trained_parameters": sum(params[n].numel() for n in chosen),
        "frozen_parameters": sum(p.numel() for n, p in params.items() if n not in chosen),
        "masks_held": masks is not None, "loss": LOSS,
        "loss_first": first, "loss_last": curve[-1]["train_loss"],
        "held_out_loss_first": curve[0]["held_out_loss"], "held_out_loss_best": best, "best_step": best_step,
        "restored_best": best_step != ran, "eval_every": eval_every, "patience": patience,
        "stopped_early": stop_reason is not None, "stop_reason": stop_reason, "curve": curve,
        "seconds": time.perf_counter() - t0,
    }


def check_split(source: CalibSource, used: int, asked: str = "--distill-steps", fix: str = "") -> None:
    """Refuse, before any work, a source too small to give both training pairs and a held-out slice.

    `asked` names what asks for distillation (`mfdeploy tune`: its space's distill_steps); `fix` ends the message."""
    if source.kind == "memory" and len(source.batches) < 2:
        raise UserError("--distill-steps needs at least two calibration batches (one is held out): "
                        "pass more batches, or drop --distill-steps")
    if source.kind == "jsonl" and used < MIN_PAIRS:
        raise UserError(f"{asked} needs at least {MIN_PAIRS} calibration pairs (an eighth is held out); "
                        f"{source.describe()} gives {used}{fix}")


def split(ctx: PruneContext) -> tuple[list[Batch], list[Batch], str]:
    """Training and held-out batches for distillation, and what was held out (for the record).

    The shapes world holds out `HELD_OUT_PAIRS` calibration seeds from a range
    pruning never reads; a JSONL file holds out its last eighth of the pairs
    pruning used (which pruning's statistics saw, but training never does);
    in-memory batches hold out the last batch.
    """
    cfg, source = ctx.cfg, ctx.source
    assert source is not None, "distillation needs calibration pairs"
    if source.kind == "shapes":
        train = list(ctx.batches(cfg.calib_samples, cfg.batch_size))
        held = list(ctx.batches(HELD_OUT_PAIRS, cfg.batch_size, offset=HELD_OUT_OFFSET))
        return train, held, (f"{HELD_OUT_PAIRS} shapes-world calibration pairs from seed offset {HELD_OUT_OFFSET}, "
                             "which neither pruning nor training reads")
    check_split(source, ctx.used)
    if source.kind == "memory":
        batches = list(ctx.batches(ctx.used, cfg.batch_size))
        return batches[:-1], batches[-1:], f"the last of {len(batches)} in-memory batches"
    n_held = max(2, ctx.used // 8)
    n_train = ctx.used - n_held
    train = list(ctx.batches(n_train, cfg.batch_size))
    held = list(ctx.batches(n_held, cfg.batch_size, offset=n_train))
    return train, held, f"pairs {n_train + 1}-{ctx.used} of {source.describe()} (pruning used them; training does not)"


def recover(ctx: PruneContext, teacher: nn.Module, masks: dict[str, torch.Tensor] | None,
            patience: int = PATIENCE) -> dict:
    """Distil the pruned `ctx.adapter` from `teacher` as `ctx.cfg` asks; the masks (if any) stay fixed.

    `patience` 0 runs every step (benchmarks that time a fixed number of steps).

    Returns:
        The `distill` record, with what was held out and which weights trained.
    """
    cfg = ctx.cfg
    train, held, held_desc = split(ctx)
    trainable = None
    if cfg.distill_params == "prunable":
        pruned = set(masks) if masks is not None else {
            param_name(n) for n in ctx.adapter.prunable_layers(cfg.include or None, cfg.exclude or None)}
        trainable = pruned.__contains__
    record = distill(ctx.adapter.model, teacher, train, held, cfg.distill_steps, cfg.distill_lr, masks=masks,
                     trainable=trainable, patience=patience, seed=cfg.seed,
                     progress=ctx.reporter.task("distillation", total=cfg.distill_steps))
    if masks is not None:  # the contract, checked: a kept-zero weight would break sparsity and the saved masks
        params = dict(ctx.adapter.model.named_parameters())
        moved = [n for n, keep in masks.items() if bool(params[n].detach()[~keep.to(params[n].device)].any())]
        if moved:
            raise RuntimeError(f"distillation moved pruned weights of {', '.join(moved[:3])}: masks not held")
    params_desc = ("every weight but the logit scale and bias (embeddings, LayerNorms, biases, heads included)"
                   if cfg.distill_params == "all" else "only the pruned layers' weights (the rest frozen)")
    return {**record, "params": cfg.distill_params, "trained": params_desc, "held_out": held_desc}


def summary(record: dict) -> str:
    """One line for the console and report.md: steps, losses, held-out losses, early stop."""
    line = (f"{record['steps_run']}/{record['steps']} steps at lr {record['lr']:g} ({record['params']} weights): "
            f"loss {record['loss_first']:.4g} -> {record['loss_last']:.4g}, held-out "
            f"{record['held_out_loss_first']:.4g} -> {record['held_out_loss_best']:.4g} (best, step "
            f"{record['best_step']}), {record['seconds']:.1f} s")
    return line + ("; stopped early: " + record["stop_reason"] if record["stopped_early"] else "")
