"""Train the bundled reference models on the shapes world, on the CPU.

    python -m mfdeploy.zoo.train --out mfdeploy/zoo/clip-shapes
    python -m mfdeploy.zoo.train --family siglip --out mfdeploy/zoo/siglip-shapes

A genuine `transformers.CLIPModel` (4 layers per tower, width 160) trained
with the symmetric contrastive loss, or a genuine `transformers.SiglipModel`
of the same size trained with SigLIP's pairwise sigmoid loss (text padded to
a fixed length, no attention mask, as SigLIP is trained; the last token
pools). Scenes are rendered once into memory
(in parallel), captions are drawn anew at every step. Reproducible from
`--seed` (same machine, same thread count).

Every batch mixes random scenes with *contrast groups*: single-object scenes
identical in all attributes but one (all six shapes, all three sizes, or all
nine positions of one object), each captioned with that attribute named.
Random scenes alone let the in-batch contrastive task be solved from a few
attributes (8 colours x 9 positions already tell most of a batch apart), and
the model skips the rest: trained on them alone it never learned shape, and
with shape groups only it learned shape but left position at chance. A
group's members can only be told apart by the attribute they differ in.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mfdeploy.data import world
from mfdeploy.eval.metrics import zero_shot_accuracy
from mfdeploy.models.processors import save_tokenizer
from mfdeploy.zoo.families import FAMILIES, MAX_TEXT_LEN, MEAN, STD, Family
from mfdeploy.zoo.tokenizer import build_tokenizer

GROUP_SEED_OFFSET = 5_000_000  # contrast-group scenes take train seeds from here on, past the random scenes
CONTRASTS = {"shape": world.SHAPES, "size": tuple(world.SIZES), "position": world.POSITIONS}
_GROUP_STRIDE = sum(len(v) for v in CONTRASTS.values())  # seeds per group index, all attributes


def _render(scene: world.Scene) -> np.ndarray:
    return np.asarray(scene.render(), dtype=np.uint8)


def contrast_group(index: int, attr: str) -> list[world.Scene]:
    """Group `index` for `attr`: one single-object scene per value of `attr`, all else shared.

    Every member has its own train-range seed, so its jitter (offset, exact
    radius, tint, noise) differs too.
    """
    values = CONTRASTS[attr]
    rng = np.random.default_rng([index, len(values), 4241])
    base = dict(shape=world.SHAPES[rng.integers(len(world.SHAPES))],
                colour=tuple(world.COLOURS)[rng.integers(len(world.COLOURS))],
                size=tuple(world.SIZES)[rng.integers(len(world.SIZES))],
                position=world.POSITIONS[rng.integers(len(world.POSITIONS))])
    names = list(CONTRASTS)
    before = sum(len(CONTRASTS[a]) for a in names[:names.index(attr)])  # seeds of the attributes listed earlier
    first = world.SPLITS["train"][0] + GROUP_SEED_OFFSET + index * _GROUP_STRIDE + before
    return [world.Scene(seed=first + k, objects=(world.Obj(**{**base, attr: v}),)) for k, v in enumerate(values)]


def group_caption(scene: world.Scene, attr: str, rng: np.random.Generator) -> str:
    """A caption of a contrast-group member that always names `attr` (sometimes nothing else)."""
    keep = 0.0 if rng.random() < 0.3 else 0.6
    body = world.article(scene.objects[0].phrase(rng, keep, must=attr))
    return world.CAPTION_PREFIXES[rng.integers(len(world.CAPTION_PREFIXES))] + body + "."


@torch.no_grad()
def zero_shot(model: torch.nn.Module, tok, images: np.ndarray, scenes: list[world.Scene],
              family: Family | None = None) -> dict[str, float]:
    """Zero-shot accuracy per attribute task on single-object scenes (training-time monitor).

    The argmax over classes of the cosine is the same under softmax (CLIP) and sigmoid (SigLIP) scoring.
    """
    family = family or FAMILIES["clip"]
    was_training = model.training
    model.eval()
    img = F.normalize(family.image_embeds(model, to_pixels(images)), dim=-1).numpy()
    out = {}
    for attr, (classes, template) in world.TASKS.items():
        enc = family.encode_text(tok, [template.format(c) for c in classes])
        txt = F.normalize(family.text_embeds(model, enc), dim=-1).numpy()
        truth = np.array([classes.index(getattr(sc.objects[0], attr)) for sc in scenes])
        out[attr] = round(zero_shot_accuracy(img, txt, truth), 4)
    model.train(was_training)
    return out


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [B,H,W,3] -> normalised float [B,3,H,W], the same arithmetic as the image processor."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--family", choices=sorted(FAMILIES), default="clip")
    ap.add_argument("--scenes", type=int, default=80_000)
    ap.add_argument("--steps", type=int, default=2600)
    ap.add_argument("--batch-size", type=int, default=192)
    ap.add_argument("--groups", type=int, default=6_000, help="contrast groups per attribute (shape, size, position)")
    ap.add_argument("--group-share", type=float, default=0.5, help="share of each batch filled with groups")
    ap.add_argument("--monitor-every", type=int, default=250, help="zero-shot check on calibration scenes")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    family = FAMILIES[args.family]

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    if args.groups * _GROUP_STRIDE > GROUP_SEED_OFFSET or args.scenes > GROUP_SEED_OFFSET:
        raise SystemExit("too many scenes or groups for the train seed range")
    scenes = [world.make_scene(s) for s in world.split_seeds("train", args.scenes)]
    groups = {attr: [contrast_group(g, attr) for g in range(args.groups)] for attr in CONTRASTS}
    flat = scenes + [sc for attr in CONTRASTS for grp in groups[attr] for sc in grp]
    monitor = [world.make_scene(s, n_objects=1) for s in world.split_seeds("calib", 384, offset=500_000)]
    with Pool(args.threads) as pool:
        images = np.stack(pool.map(_render, flat + monitor, chunksize=512))  # [N,64,64,3] uint8
    monitor_images = images[len(flat):]
    # index of every group member's image, [groups, members] per attribute
    start, group_index = len(scenes), {}
    for attr, values in CONTRASTS.items():
        group_index[attr] = start + np.arange(args.groups * len(values)).reshape(args.groups, len(values))
        start += args.groups * len(values)
    print(f"rendered {len(flat)} scenes ({args.scenes} random, {args.groups} groups per attribute) "
          f"in {time.time() - t0:.0f}s", flush=True)
    # the group part of a batch: whole groups, split between the attributes by their member counts
    group_slots = int(args.batch_size * args.group_share)
    per_attr = {attr: group_slots // len(CONTRASTS) // len(values) for attr, values in CONTRASTS.items()}
    n_random = args.batch_size - sum(per_attr[a] * len(v) for a, v in CONTRASTS.items())

    tok = build_tokenizer(world.vocabulary(), MAX_TEXT_LEN)
    model = family.build(tok)
    model.train()
    # The image's position embeddings start (std 0.02) ~70x smaller than a 32x32x3 patch's embedding, and at
    # the base rate they take most of the run to grow: position then stays at chance. They learn 10x faster.
    fast = family.fast_params()
    params = dict(model.named_parameters())
    decay = [p for n, p in params.items() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in params.items() if not (p.ndim >= 2 and "embedding" not in n) and n not in fast]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05, "lr_mult": 1.0},
                             {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
                             {"params": [params[n] for n in sorted(fast)], "weight_decay": 0.0, "lr_mult": 10.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    history: list[dict] = []
    for step in range(args.steps):
        idx = list(rng.choice(len(scenes), size=n_random, replace=False))
        captions = [scenes[i].caption(rng) for i in idx]
        for attr in CONTRASTS:
            for g in rng.choice(args.groups, size=per_attr[attr], replace=False):
                members = group_index[attr][g]
                idx.extend(members)
                captions.extend(group_caption(flat[i], attr, rng) for i in members)
        pixels = to_pixels(images[idx])
        enc = family.encode_text(tok, captions)
        for g in opt.param_groups:
            g["lr"] = lr_at(step) * g["lr_mult"]
        img = F.normalize(family.image_embeds(model, pixels), dim=-1)
        txt = F.normalize(family.text_embeds(model, enc), dim=-1)
        logits = family.logits(model, img, txt)  # [B, B], images x captions
        loss = family.loss(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            family.after_step(model)
        if step % 50 == 0 or step == args.steps - 1:
            acc = (logits.argmax(1) == torch.arange(len(idx))).float().mean().item()
            print(f"step {step} loss {loss.item():.3f} acc {acc:.3f} lr {lr_at(step):.2e} "
                  f"t {time.time() - t0:.0f}s", flush=True)
        if args.monitor_every and (step + 1) % args.monitor_every == 0 or step == args.steps - 1:
            history.append({"step": step + 1, **zero_shot(model, tok, monitor_images, monitor, family)})
            print(f"zero-shot on 384 calibration scenes: {history[-1]}", flush=True)

    elapsed = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(args.out)
    save_tokenizer(tok, args.out)  # loadable by transformers 4 and 5
    family.image_processor().save_pretrained(args.out)
    (args.out / "training.json").write_text(json.dumps({
        "command": "python -m mfdeploy.zoo.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "family": family.name, "seed": args.seed, "scenes": args.scenes, "groups": args.groups,
        "group_share": args.group_share,
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
        "seconds": round(elapsed, 1), "monitor": history,
        "torch": torch.__version__,
    }, indent=2))
    print(f"saved to {args.out} after {elapsed:.0f}s")


if __name__ == "__main__":
    main()
