"""Knowledge distillation from the dense model after structured pruning (MoPE-CLIP's recovery step).

Loss = cross-modal KL between teacher and student image-text similarity
logits (both directions) + MSE between student and teacher embeddings of
each tower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mfdeploy.models.inputs import Batch


def _embed(model: nn.Module, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    img = model.get_image_features(pixel_values=b.pixel_values)
    txt = model.get_text_features(input_ids=b.input_ids, attention_mask=b.attention_mask)
    img = getattr(img, "pooler_output", img)  # transformers 5 returns a model output
    txt = getattr(txt, "pooler_output", txt)
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def distill(student: nn.Module, teacher: nn.Module, batches: Sequence[Batch], steps: int, lr: float = 1e-4,
            seed: int = 0, progress: Callable[[int], None] | None = None) -> dict:
    """Train `student` in place for `steps` steps over the calibration batches (cycled).

    Args:
        student: the pruned model, trained in place.
        teacher: the dense model.
        batches: calibration batches, on the models' device.
        steps: optimiser steps.
        lr: AdamW learning rate.
        seed: seeds torch before training.
        progress: called with 1 after each step (a reporter task's advance).
    """
    torch.manual_seed(seed)
    teacher.eval()
    with torch.no_grad():
        targets = [_embed(teacher, b) for b in batches]
    student.train()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    scale = teacher.logit_scale.detach().exp()
    first = last = 0.0
    for step in range(steps):
        i = step % len(batches)
        b, (t_img, t_txt) = batches[i], targets[i]
        s_img, s_txt = _embed(student, b)
        s_logits, t_logits = scale * s_img @ s_txt.t(), scale * t_img @ t_txt.t()  # [B, B]
        kl = 0.5 * (F.kl_div(F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1), log_target=True,
                             reduction="batchmean")
                    + F.kl_div(F.log_softmax(s_logits.t(), 1), F.log_softmax(t_logits.t(), 1), log_target=True,
                               reduction="batchmean"))
        mse = F.mse_loss(s_img, t_img) + F.mse_loss(s_txt, t_txt)
        loss = kl + mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = loss.item()  # .item(), not float(): the loss still requires grad
        first = last if step == 0 else first
        if progress is not None:
            progress(1)
    student.eval()
    return {"steps": steps, "lr": lr, "loss_first": first, "loss_last": last,
            "loss": "KL(similarity logits, both directions) + MSE(embeddings)"}
