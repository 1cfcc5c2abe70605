"""What each method keeps: every task, retrieval and mean retention vs dense, on the bundled model.

    python benchmarks/retention.py [--calib-samples 256] [--out benchmarks/results]

Rows are labelled `score / budget` (`--method` picks the score and its
default budget, `--budget` overrides the budget): every method at its default
(random, magnitude, wanda / uniform; multiflow / modality; wanda / ecoflap =
ECoFLaP; mope with and without distillation) plus magnitude / global at
ratios 0.5, 0.63, 0.75 and 0.9; the crossed combinations (multiflow / uniform,
multiflow / ecoflap, wanda / modality, magnitude / modality) at 0.5, 0.63 and
0.75; and the 2:4 pattern at 0.5 for the four scores. Every row gets the same
calibration pairs (the shapes world's calibration seeds) and the same seed.
Writes retention.json (with each row's `budget_by_role`), retention.md and
retention.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from rich.console import Console

from mfdeploy.eval import evaluate_model, retention
from mfdeploy.models import load
from mfdeploy.prune import PruneConfig, prune_model

RATIOS = (0.5, 0.63, 0.75, 0.9)
CROSSED_RATIOS = (0.5, 0.63, 0.75)
# (label, method, extra PruneConfig fields, ratios, also at 2:4)
METHODS = [
    ("random / uniform", "random", {}, RATIOS, True),
    ("magnitude / uniform", "magnitude", {}, RATIOS, True),
    ("magnitude / global", "magnitude", {"budget": "global"}, RATIOS, False),
    ("wanda / uniform", "wanda", {}, RATIOS, True),
    ("multiflow / modality (MULTIFLOW)", "multiflow", {}, RATIOS, True),
    ("wanda / ecoflap (ECoFLaP)", "ecoflap", {}, RATIOS, False),
    ("multiflow / uniform", "multiflow", {"budget": "uniform"}, CROSSED_RATIOS, False),
    ("multiflow / ecoflap", "multiflow", {"budget": "ecoflap"}, CROSSED_RATIOS, False),
    ("wanda / modality", "wanda", {"budget": "modality"}, CROSSED_RATIOS, False),
    ("magnitude / modality", "magnitude", {"budget": "modality"}, CROSSED_RATIOS, False),
    ("mope", "mope", {"mope_depth_share": 0.5}, RATIOS, False),
    ("mope + distill", "mope", {"mope_depth_share": 0.5, "distill_steps": 300}, RATIOS, False),
]


def run_one(dense, label, method, extra, ratio, pattern, args) -> dict:
    adapter = copy.deepcopy(dense)
    cfg = PruneConfig(ratio=ratio, method=method, pattern=pattern, calib="shapes", calib_samples=args.calib_samples,
                      batch_size=32, seed=args.seed, show_progress=False, **extra)
    t0 = time.perf_counter()
    record = prune_model(adapter, cfg)
    prune_s = time.perf_counter() - t0
    result = evaluate_model(adapter)
    label = f"{record['score']} / 2:4" if pattern else label
    return {"label": label, "method": method, "score": record["score"], "budget": record["budget"],
            "ratio": ratio, "pattern": record["pattern"],
            "achieved_sparsity": record["sparsity"]["overall"], "prune_s": round(prune_s, 2),
            "budget_by_role": record["budget_by_role"],
            "tasks": result["tasks"], "retrieval": result["retrieval"]}


def markdown(rows: list[dict], dense: dict) -> str:
    tasks = list(dense["tasks"])
    head = ["method", "ratio", "pattern", "sparsity", *tasks, "i2t R@1", "t2i R@1", "mean task ret.", "prune s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| dense | 0 | - | 0 | " + " | ".join(f"{dense['tasks'][t]:.3f}" for t in tasks)
                 + f" | {dense['retrieval']['i2t_r1']:.3f} | {dense['retrieval']['t2i_r1']:.3f} | 1.000 | - |")
    for r in rows:
        lines.append(f"| {r['label']} | {r['ratio']:g} | {r['pattern']} | {r['achieved_sparsity']:.3f} | "
                     + " | ".join(f"{r['tasks'][t]:.3f}" for t in tasks)
                     + f" | {r['retrieval']['i2t_r1']:.3f} | {r['retrieval']['t2i_r1']:.3f} | "
                     f"{r['retention']['mean_task_retention']:.3f} | {r['prune_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in dict.fromkeys(r["label"] for r in rows if r["pattern"] != "2:4"):
        pts = [(r["ratio"], r["retention"]["mean_task_retention"]) for r in rows
               if r["label"] == label and r["pattern"] != "2:4"]
        ax.plot(*zip(*pts), marker="o", label=label)
    for r in rows:
        if r["pattern"] == "2:4":
            ax.scatter([r["ratio"]], [r["retention"]["mean_task_retention"]], marker="x", color="k")
    ax.scatter([], [], marker="x", color="k", label="2:4 @ 0.5 (each criterion)")
    ax.set_xlabel("ratio (fraction of prunable weights removed)")
    ax.set_ylabel("mean task retention (pruned / dense)")
    ax.set_title("bundled model: zero-shot retention vs ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--methods", default=",".join(m[0] for m in METHODS), help="comma-separated labels")
    ap.add_argument("--ratios", default=",".join(str(r) for r in RATIOS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    t_start = time.perf_counter()
    dense_adapter = load(None)
    dense = evaluate_model(dense_adapter)
    wanted = set(args.methods.split(","))
    ratios = [float(r) for r in args.ratios.split(",")]
    jobs = [(label, m, extra, r, None) for label, m, extra, rs, _ in METHODS if label in wanted
            for r in ratios if r in rs]
    jobs += [(label, m, extra, 0.5, "2:4") for label, m, extra, _, two_four in METHODS if two_four and label in wanted]
    rows = []
    for i, (label, method, extra, ratio, pattern) in enumerate(jobs, 1):
        row = run_one(dense_adapter, label, method, extra, ratio, pattern, args)
        row["retention"] = retention(row, dense)
        rows.append(row)
        console.print(f"[{i}/{len(jobs)}] {label} @ {ratio:g} {pattern or ''}: mean task retention "
                      f"{row['retention']['mean_task_retention']:.3f} (prune {row['prune_s']:.1f}s)")
    total = time.perf_counter() - t_start
    data = {"model": "mfdeploy/clip-shapes", "calib_samples": args.calib_samples, "seed": args.seed,
            "dense": {"tasks": dense["tasks"], "retrieval": dense["retrieval"]}, "rows": rows,
            "seconds": round(total, 1)}
    (args.out / "retention.json").write_text(json.dumps(data, indent=2))
    md = markdown(rows, dense)
    (args.out / "retention.md").write_text(md)
    plot(rows, args.out / "retention.png")
    console.print(md)
    console.print(f"total {total / 60:.1f} min")


if __name__ == "__main__":
    main()
