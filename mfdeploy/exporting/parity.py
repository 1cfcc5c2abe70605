"""Parity of exported towers: ONNX Runtime (CPU) against PyTorch on real inputs.

Inputs come from the model's own image processor and tokenizer: held-out
scenes of the shapes world and captions of varied lengths. They run at batch
sizes and text lengths other than the traced example (full batch, small
batches, one caption at a time without padding, and padding to the model's
maximum length), which is what exposes a graph that baked in a shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfdeploy.artifacts.layout import PARITY_INPUTS, TOWERS
from mfdeploy.data import world
from mfdeploy.errors import UserError
from mfdeploy.exporting.onnx_export import float32_tower
from mfdeploy.ortsession import ort_session

MIN_COSINE = 0.9999  # per-row cosine between ONNX Runtime and PyTorch embeddings


def parity_inputs(adapter, n: int = 16) -> dict[str, Any]:
    """`n` eval-split scenes: preprocessed images `[n,3,H,W]` and their captions (full and partial)."""
    seeds = world.split_seeds("eval", n)
    scenes = [world.make_scene(s) for s in seeds]
    # Alternate full captions with randomly phrased partial ones: lengths vary across the batch.
    captions = [sc.caption() if i % 2 == 0 else sc.caption(np.random.default_rng(sc.seed))
                for i, sc in enumerate(scenes)]
    pixel_values = adapter.pixel_values([sc.render() for sc in scenes])
    return {"pixel_values": pixel_values, "captions": captions}


def embedding_errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max absolute error and smallest per-row cosine of two `[B, D]` embedding arrays (NaN propagates)."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    cos = (ref64 * got64).sum(-1) / (np.linalg.norm(ref64, axis=-1) * np.linalg.norm(got64, axis=-1))
    return {"max_abs_err": float(np.abs(ref64 - got64).max()), "min_cosine": float(cos.min())}


def _pad_to(ids: torch.Tensor, mask: torch.Tensor, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - ids.shape[1]
    ids = torch.cat([ids, torch.full((ids.shape[0], extra), pad_id, dtype=ids.dtype)], dim=1)
    mask = torch.cat([mask, torch.zeros((mask.shape[0], extra), dtype=mask.dtype)], dim=1)
    return ids, mask


def text_batches(adapter, captions: list[str]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Text runs: all captions padded to the longest, each caption alone, and padding to the maximum.

    Tokenized as the family does: for a family that pads to a fixed length every run has that length (the
    last run then repeats the first captions at it).
    """
    ids, mask = adapter.tokenize(captions)
    padded = "longest" if adapter.fixed_text_len is None else f"the fixed length {adapter.fixed_text_len}"
    runs = [(f"batch {len(captions)}, padded to {padded}", {"input_ids": ids, "attention_mask": mask})]
    for i, caption in enumerate(captions):
        one_ids, one_mask = adapter.tokenize([caption])
        runs.append((f"caption {i} alone", {"input_ids": one_ids, "attention_mask": one_mask}))
    pad_id = adapter.tokenizer.pad_token_id if adapter.tokenizer.pad_token_id is not None else 0
    k = min(3, len(captions))
    full_ids, full_mask = _pad_to(ids[:k], mask[:k], adapter.max_text_len, pad_id)
    runs.append((f"batch {k}, padded to max_text_len", {"input_ids": full_ids, "attention_mask": full_mask}))
    return runs


def check_parity(adapter, onnx_dir: Path, n: int = 16, min_cosine: float = MIN_COSINE,
                 save_inputs: bool = False) -> dict[str, Any]:
    """Compare `vision.onnx`/`text.onnx` in ONNX Runtime with the adapter's PyTorch towers.

    Args:
        adapter: the adapter the ONNX files were exported from.
        onnx_dir: directory holding `vision.onnx` and `text.onnx`.
        n: number of images and captions (at least 2).
        min_cosine: smallest acceptable per-row cosine for each tower.
        save_inputs: also write the real inputs to `onnx_dir/parity_inputs.npz`.

    Returns:
        JSON-able: per tower the max abs error, the min cosine, whether it passed,
        and every run (batch, text length, its own errors).

    Raises:
        UserError: a tower's min cosine is below `min_cosine` (or not finite).
    """
    if n < 2:
        raise UserError(f"parity needs at least 2 samples (got n={n})")
    onnx_dir = Path(onnx_dir)
    data = parity_inputs(adapter, n)
    pv = data["pixel_values"]
    # the float32 towers the exporter traced (a half-precision checkpoint is compared as exported)
    modules = {"vision": float32_tower(adapter.vision_tower()), "text": float32_tower(adapter.text_tower())}
    with torch.no_grad():
        vision_ref = modules["vision"](pixel_values=pv).float().numpy()  # [n, D]: every image once
    vision_runs = [(f"batch {n}", {"pixel_values": pv}, vision_ref)]
    step = max(1, n // 3 + (1 if n % 3 else 0))  # e.g. 16 -> 6,6,4: sizes the example (2) never had
    # smaller batches of the same images: ONNX Runtime runs each, PyTorch's rows are reused (an image's
    # embedding does not depend on its batch), which halves the reference work on a ViT-H-sized tower
    vision_runs += [(f"batch {len(pv[i:i + step])}", {"pixel_values": pv[i:i + step]}, vision_ref[i:i + step])
                    for i in range(0, n, step)]
    runs = {"vision": vision_runs, "text": [(label, feed, None) for label, feed in
                                            text_batches(adapter, data["captions"])]}

    result: dict[str, Any] = {"provider": "CPUExecutionProvider", "n": n, "min_cosine_required": min_cosine}
    failures = []
    for tower, spec in TOWERS.items():
        session = ort_session(onnx_dir / spec["file"])  # CPU, no spinning: a one-off check on a shared machine
        out_name = next(iter(spec["outputs"]))
        takes = {i.name for i in session.get_inputs()}  # the family's inputs (SigLIP's text: input_ids alone)
        records = []
        for label, feed, ref in runs[tower]:
            if ref is None:
                with torch.no_grad():
                    ref = modules[tower](**feed).float().numpy()
            got = session.run([out_name], {k: v.numpy() for k, v in feed.items() if k in takes})[0]
            shape = list(next(iter(feed.values())).shape)
            records.append({"run": label, "shape": shape, **embedding_errors(ref, got)})
        # np.max/np.min propagate a NaN (Python's max/min may skip it), so a NaN fails below
        worst = {"max_abs_err": float(np.max([r["max_abs_err"] for r in records])),
                 "min_cosine": float(np.min([r["min_cosine"] for r in records]))}
        passed = bool(np.isfinite(worst["min_cosine"]) and worst["min_cosine"] >= min_cosine)
        result[tower] = {**worst, "passed": passed, "runs": records}
        del session  # before the next tower's session opens: one tower's weights in ONNX Runtime at a time
        if not passed:
            failures.append(f"{tower} min cosine {worst['min_cosine']:.6f} (max abs err {worst['max_abs_err']:.2e})")
    if failures:
        raise UserError(f"ONNX export does not match PyTorch (required cosine >= {min_cosine}): "
                        + "; ".join(failures))
    if save_inputs:
        ids, mask = adapter.tokenize(data["captions"])
        np.savez(onnx_dir / PARITY_INPUTS, pixel_values=pv.numpy(), input_ids=ids.numpy(),
                 attention_mask=mask.numpy())
        result["inputs_file"] = PARITY_INPUTS
    return result
