"""Train the bundled reference CLIP on the shapes world, on the CPU.

    python -m mfdeploy.zoo.train --out mfdeploy/zoo/clip-shapes

A genuine `transformers.CLIPModel` (4 layers per tower, width 160) trained
with the symmetric contrastive loss. Scenes are rendered once into memory
(in parallel), captions are drawn anew at every step. Reproducible from
`--seed` (same machine, same thread count).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from mfdeploy.data import world
from mfdeploy.zoo.tokenizer import build_tokenizer

MAX_TEXT_LEN = 48
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def make_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int, width: int = 160,
                layers: int = 4) -> CLIPConfig:
    """The reference architecture: two 4-layer towers of width 160, 64x64 images, patch 16."""
    text = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                num_attention_heads=4, max_position_embeddings=MAX_TEXT_LEN, pad_token_id=pad_id,
                bos_token_id=bos_id, eos_token_id=eos_id)
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=world.IMAGE_SIZE, patch_size=16, num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)


def image_processor() -> CLIPImageProcessor:
    size = world.IMAGE_SIZE
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=list(MEAN), image_std=list(STD), do_convert_rgb=True)


def _render(seed: int) -> np.ndarray:
    return np.asarray(world.make_scene(seed).render(), dtype=np.uint8)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [B,H,W,3] -> normalised float [B,3,H,W], the same arithmetic as the image processor."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenes", type=int, default=120_000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=192)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    seeds = list(world.split_seeds("train", args.scenes))
    with Pool(args.threads) as pool:
        images = np.stack(pool.map(_render, seeds, chunksize=512))  # [N,64,64,3] uint8
    scenes = [world.make_scene(s) for s in seeds]
    print(f"rendered {len(seeds)} scenes in {time.time() - t0:.0f}s", flush=True)

    tok = build_tokenizer(world.vocabulary(), MAX_TEXT_LEN)
    config = make_config(len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    model = CLIPModel(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    for step in range(args.steps):
        idx = rng.choice(len(scenes), size=args.batch_size, replace=False)
        pixels = to_pixels(images[idx])
        enc = tok([scenes[i].caption(rng) for i in idx], padding=True, return_tensors="pt")
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
        logits = out.logits_per_image  # [B, B]
        target = torch.arange(len(idx))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == args.steps - 1:
            acc = (logits.argmax(1) == target).float().mean().item()
            print(f"step {step} loss {loss.item():.3f} acc {acc:.3f} lr {lr_at(step):.2e} "
                  f"t {time.time() - t0:.0f}s", flush=True)

    elapsed = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    image_processor().save_pretrained(args.out)
    (args.out / "training.json").write_text(json.dumps({
        "command": "python -m mfdeploy.zoo.train " + " ".join(argv or []),
        "seed": args.seed, "scenes": args.scenes, "steps": args.steps, "batch_size": args.batch_size,
        "lr": args.lr, "threads": args.threads, "seconds": round(elapsed, 1),
        "torch": torch.__version__,
    }, indent=2))
    print(f"saved to {args.out} after {elapsed:.0f}s")


if __name__ == "__main__":
    main()
