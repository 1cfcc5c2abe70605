"""What each method keeps: every task, retrieval and mean retention vs dense, on the bundled model.

    python benchmarks/retention.py [--calib-samples 256] [--out benchmarks/results]
    python benchmarks/retention.py --model mfdeploy/siglip-shapes --int8-all --ratios 0.5,0.75 \
        --methods "magnitude / uniform,wanda / uniform,multiflow / modality (MULTIFLOW),mope,mope + distill,\
magnitude / uniform + distill,wanda / uniform + distill,multiflow / modality (MULTIFLOW) + distill"

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

`--int8` adds "+ int8" rows (issue 19's bar: INT8 within 3 points of the same
pruned model in fp32) for MULTIFLOW @ 0.5, MULTIFLOW 2:4 and MoPE @ 0.5 +
distillation: each pruned model is exported, quantized for ONNX Runtime as
`mfdeploy quantize` does (default scheme, shapes calibration) and evaluated
through ONNX Runtime. `--int8-only` runs just those rows and keeps the other
rows of an existing retention.json. `--int8-all` gives every row an INT8 twin.

`--model` measures another bundled model (e.g. `mfdeploy/siglip-shapes`) with the
same rows; its files are named after it (`retention_siglip-shapes.*`).

"+ distill" rows (issue 15) recover each unstructured method at 0.63, 0.75
and 0.9 (and MULTIFLOW 2:4) with the 300 distillation steps MoPE uses, masks
held fixed: each such row records whether its masks are bit-identical to the
undistilled run's. One more row trains only the pruned layers' weights
(`--distill-params prunable`), to show whether freezing the rest matters.
`--distill-only` runs just the distillation rows and keeps the others.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from rich.console import Console

from mfdeploy.eval import evaluate_model, retention
from mfdeploy.models import load
from mfdeploy.pruning import PruneConfig, prune_model

RATIOS = (0.5, 0.63, 0.75, 0.9)
CROSSED_RATIOS = (0.5, 0.63, 0.75)
DISTILL_RATIOS = (0.5, 0.63, 0.75, 0.9)
DISTILL_STEPS = 300  # MoPE's, for every "+ distill" row
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
    ("mope + distill", "mope", {"mope_depth_share": 0.5, "distill_steps": DISTILL_STEPS}, RATIOS, False),
    # recovery for the unstructured methods (issue 15): the same steps as MoPE, masks held fixed
    ("magnitude / uniform + distill", "magnitude", {"distill_steps": DISTILL_STEPS}, DISTILL_RATIOS, False),
    ("wanda / uniform + distill", "wanda", {"distill_steps": DISTILL_STEPS}, DISTILL_RATIOS, False),
    ("multiflow / modality (MULTIFLOW) + distill", "multiflow", {"distill_steps": DISTILL_STEPS}, DISTILL_RATIOS,
     True),
    ("wanda / ecoflap (ECoFLaP) + distill", "ecoflap", {"distill_steps": DISTILL_STEPS}, DISTILL_RATIOS, False),
    # does freezing what is not pruned matter? only the pruned layers' weights train
    ("MULTIFLOW + distill (pruned layers only)", "multiflow",
     {"distill_steps": DISTILL_STEPS, "distill_params": "prunable"}, (0.75,), False),
]


# (label, ratio, pattern) of the rows that also get an INT8 row with --int8
INT8_ROWS = {("multiflow / modality (MULTIFLOW)", 0.5, None), ("multiflow / modality (MULTIFLOW)", 0.5, "2:4"),
             ("mope + distill", 0.5, None)}


def int8_scores(adapter) -> dict:
    """The pruned model's towers exported, quantized for ONNX Runtime (`mfdeploy quantize`'s defaults), evaluated."""
    import tempfile

    from mfdeploy.exporting import export_towers
    from mfdeploy.quantize.build import evaluate_int8
    from mfdeploy.quantize.run import QuantizeConfig, quantize_towers

    with tempfile.TemporaryDirectory(prefix="retention-int8-") as tmp:
        fp32, int8 = Path(tmp) / "onnx", Path(tmp) / "onnx_int8"
        export_towers(adapter, fp32)
        int8.mkdir()
        record = quantize_towers(adapter, fp32, int8, QuantizeConfig(target="ort", calib="shapes"))
        result = evaluate_int8(adapter, int8, "shapes")
    return {"tasks": result["tasks"], "retrieval": result["retrieval"],
            "int8": {t: {"scheme": r["scheme"], "min_cosine": record["parity"][t]["min_cosine"]}
                     for t, r in record["towers"].items()}}


_MASKS: dict[tuple, dict] = {}  # (method, options without distillation, ratio, pattern) -> masks of that run


def _prune(dense, method, extra, ratio, pattern, args):
    adapter = copy.deepcopy(dense)
    cfg = PruneConfig(ratio=ratio, method=method, pattern=pattern, calib="shapes", calib_samples=args.calib_samples,
                      batch_size=32, seed=args.seed, show_progress=False, **extra)
    t0 = time.perf_counter()
    record = prune_model(adapter, cfg)
    return adapter, record, time.perf_counter() - t0


def _same_masks(dense, method, extra, ratio, pattern, args, masks: dict) -> bool:
    """Whether distillation left pruning's masks as they were: the undistilled run's masks, bit for bit."""
    plain = {k: v for k, v in extra.items() if not k.startswith("distill_")}
    key = (method, tuple(sorted(plain.items())), ratio, pattern)
    if key not in _MASKS:
        _MASKS[key] = _prune(dense, method, plain, ratio, pattern, args)[1]["_masks"]
    base = _MASKS[key]
    return base.keys() == masks.keys() and all(torch.equal(base[n], masks[n]) for n in masks)


def run_one(dense, label, method, extra, ratio, pattern, args) -> dict:
    adapter, record, prune_s = _prune(dense, method, extra, ratio, pattern, args)
    result = evaluate_model(adapter)
    key = (label, ratio, pattern)
    distilled = record.get("distill")
    label = f"{record['score']} / 2:4" + (" + distill" if distilled else "") if pattern else label
    row = {"label": label, "method": method, "score": record["score"], "budget": record["budget"],
           "ratio": ratio, "pattern": record["pattern"],
           "achieved_sparsity": record["sparsity"]["overall"], "prune_s": round(prune_s, 2),
           "budget_by_role": record["budget_by_role"],
           "tasks": result["tasks"], "retrieval": result["retrieval"]}
    masks = record.get("_masks")
    if masks is not None and not distilled:
        plain = {k: v for k, v in extra.items() if not k.startswith("distill_")}
        _MASKS[(method, tuple(sorted(plain.items())), ratio, pattern)] = masks
    if distilled:
        row["distill"] = {k: distilled[k] for k in ("steps", "steps_run", "lr", "params", "stopped_early",
                                                    "held_out_loss_first", "held_out_loss_best", "seconds")}
        if masks is not None:
            row["distill"]["masks_identical"] = _same_masks(dense, method, extra, ratio, pattern, args, masks)
    if args.int8 and (key in INT8_ROWS or args.int8_all):
        q = int8_scores(adapter)
        fp32 = [*row["tasks"].values(), *row["retrieval"].values()]
        drop = max(a - b for a, b in zip(fp32, [*q["tasks"].values(), *q["retrieval"].values()]))
        row = [row, {**row, **q, "label": f"{label} + int8", "int8_max_drop_vs_fp32": round(drop, 4)}]
    return row


def _merged(old_rows: list[dict], new_rows: list[dict]) -> list[dict]:
    """The old rows in their order, each re-measured one replaced by its new row(s) (fp32, then its + int8)."""
    def key(r: dict) -> tuple:
        return r["label"].removesuffix(" + int8"), r["ratio"], r["pattern"]

    fresh: dict[tuple, list[dict]] = {}
    for row in new_rows:
        fresh.setdefault(key(row), []).append(row)
    measured = set(fresh)
    out = []
    for row in old_rows:
        if key(row) in fresh:
            out += fresh.pop(key(row))
        elif key(row) not in measured:
            out.append(row)
    return out + [r for rows in fresh.values() for r in rows]


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


def plot(rows: list[dict], path: Path, model: str = "bundled model") -> None:
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
    ax.set_title(f"{model}: zero-shot retention vs ratio")
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
    ap.add_argument("--int8", action="store_true", help="add INT8 rows (see the docstring)")
    ap.add_argument("--int8-only", action="store_true", help="only the rows with INT8 twins; keep the others")
    ap.add_argument("--distill-only", action="store_true", help="only the '+ distill' rows; keep the others")
    ap.add_argument("--int8-all", action="store_true", help="an INT8 row for every row, not only the three of issue 19")
    ap.add_argument("--model", default="mfdeploy/clip-shapes", help="a bundled model (its files get its name)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the existing results that this run does not measure (as --int8-only does)")
    args = ap.parse_args()
    args.int8 = args.int8 or args.int8_only or args.int8_all
    default_model = args.model == "mfdeploy/clip-shapes"
    stem = "retention" if default_model else "retention_" + args.model.rsplit("/", 1)[-1]
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    t_start = time.perf_counter()
    dense_adapter = load(args.model)
    dense = evaluate_model(dense_adapter)
    wanted = set(args.methods.split(","))
    ratios = [float(r) for r in args.ratios.split(",")]
    jobs = [(label, m, extra, r, None) for label, m, extra, rs, _ in METHODS if label in wanted
            for r in ratios if r in rs]
    jobs += [(label, m, extra, 0.5, "2:4") for label, m, extra, _, two_four in METHODS if two_four and label in wanted]
    if args.int8_only:
        jobs = [j for j in jobs if (j[0], j[3], j[4]) in INT8_ROWS]
    if args.distill_only:
        jobs = [j for j in jobs if j[2].get("distill_steps")]
    previous = args.out / f"{stem}.json"
    old_rows = json.loads(previous.read_text())["rows"] if previous.exists() and \
        (args.int8_only or args.distill_only or args.merge) else None

    def all_rows(rows: list[dict]) -> list[dict]:
        """The rows measured now, merged into the previous results' rows (in their order) when asked."""
        return _merged(old_rows, rows) if old_rows is not None else rows

    def save(rows: list[dict]) -> str:
        merged = all_rows(rows)
        data = {"model": args.model, "calib_samples": args.calib_samples, "seed": args.seed,
                "dense": {"tasks": dense["tasks"], "retrieval": dense["retrieval"]}, "rows": merged,
                "seconds": round(time.perf_counter() - t_start, 1)}
        (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2))
        md = markdown(merged, dense)
        (args.out / f"{stem}.md").write_text(md)
        return md

    rows: list[dict] = []
    for i, (label, method, extra, ratio, pattern) in enumerate(jobs, 1):
        made = run_one(dense_adapter, label, method, extra, ratio, pattern, args)
        for row in made if isinstance(made, list) else [made]:
            row["retention"] = retention(row, dense)
            rows.append(row)
            console.print(f"[{i}/{len(jobs)}] {row['label']} @ {ratio:g} {pattern or ''}: mean task retention "
                          f"{row['retention']['mean_task_retention']:.3f} (prune {row['prune_s']:.1f}s)"
                          + (f", int8 max drop vs fp32 {row['int8_max_drop_vs_fp32']:.3f}"
                             if "int8_max_drop_vs_fp32" in row else "")
                          + (f", i2t R@1 {row['retrieval']['i2t_r1']:.3f}, distilled {row['distill']['steps_run']} "
                             f"steps, masks identical: {row['distill'].get('masks_identical', 'n/a')}"
                             if "distill" in row else ""))
        save(rows)  # after every job: a run cut short keeps what it measured
    md = save(rows)
    plot(all_rows(rows), args.out / f"{stem}.png", args.model)
    console.print(md)
    console.print(f"total {(time.perf_counter() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
