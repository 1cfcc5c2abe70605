"""Zero-shot attribute accuracy of the bundled model on dark (training), mid-grey and light backgrounds.

The bundled model (`mfdeploy/zoo/clip-shapes`) was trained on scenes whose
background grey level is 15-79 (`world.BACKGROUNDS["dark"]`). This script
renders the held-out attribute scenes of `mfdeploy eval` (the first N seeds of
the eval split, one object each) again with only the background level
changed, and scores the four zero-shot tasks on each. Accuracy only, no
timing: the machine's load does not matter.

    python benchmarks/backgrounds.py               # 1000 images per background
    python benchmarks/backgrounds.py --images 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mfdeploy.data import world
from mfdeploy.eval.datasets import EvalSet, shapes_suite
from mfdeploy.eval.evaluate import evaluate, open_runner
from mfdeploy.eval.prepare import prepare
from mfdeploy.models import load

CHANCE = {task: 1 / len(classes) for task, (classes, _) in world.TASKS.items()}


def background_set(n_images: int, background: str) -> EvalSet:
    """The attribute part of the shapes suite (same scenes, labels, prompts), drawn on another background."""
    suite = shapes_suite(n_images, 1)
    scenes = [world.make_scene(s, n_objects=1) for s in world.split_seeds("eval", n_images)]
    lo, hi = world.BACKGROUNDS[background]
    return EvalSet(kind="shapes", description=f"shapes world, eval split, {background} background ({lo}-{hi - 1})",
                   key=("shapes-background", n_images, background),
                   images=tuple(sc.render(background) for sc in scenes), tasks=suite.tasks)


def measure(model: str | None, n_images: int, backgrounds: list[str]) -> dict[str, dict[str, float]]:
    """Background -> task -> zero-shot accuracy of `model` (default: the bundled one)."""
    adapter = load(model)
    results = {}
    with open_runner(model, adapter, "torch") as runner:
        for background in backgrounds:
            results[background] = evaluate(runner, prepare(adapter, background_set(n_images, background)))["tasks"]
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per background, one column per task, and the mean."""
    tasks = list(world.TASKS)
    lines = ["| background | grey level | " + " | ".join(tasks) + " | mean |",
             "|---|---|" + "---:|" * (len(tasks) + 1)]
    for background, acc in results.items():
        lo, hi = world.BACKGROUNDS[background]
        mean = sum(acc[t] for t in tasks) / len(tasks)
        lines.append(f"| {background} | {lo}-{hi - 1} | " + " | ".join(f"{100 * acc[t]:.1f}%" for t in tasks)
                     + f" | {100 * mean:.1f}% |")
    lines.append("| chance | | " + " | ".join(f"{100 * CHANCE[t]:.1f}%" for t in tasks) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model to score (default: the bundled one)")
    ap.add_argument("--images", type=int, default=1000, help="single-object images per background")
    ap.add_argument("--backgrounds", default=",".join(world.BACKGROUNDS), help="comma-separated, of: "
                    + ", ".join(world.BACKGROUNDS))
    ap.add_argument("--json", type=Path, default=None, help="also write the accuracies here")
    args = ap.parse_args(argv)
    backgrounds = [b.strip() for b in args.backgrounds.split(",") if b.strip()]
    unknown = [b for b in backgrounds if b not in world.BACKGROUNDS]
    if unknown or not backgrounds:
        ap.error(f"--backgrounds: unknown {unknown}; known: {', '.join(world.BACKGROUNDS)}")
    results = measure(args.model, args.images, backgrounds)
    print(f"zero-shot attribute accuracy, {args.images} held-out single-object scenes per background "
          f"(the same scenes, only the background level differs)")
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"images": args.images, "accuracy": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
