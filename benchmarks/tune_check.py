"""Issue 27's numbers for `mfdeploy tune`: the bundled model's 15-minute search, and ViT-B/32's quick space.

    python benchmarks/tune_check.py bundled [--budget 15] [--out DIR] [--figure docs/assets/tune_pareto.png]
    python benchmarks/tune_check.py vitb32 [--budget 20] [--out DIR] [--pairs 64]

`bundled`: `mfdeploy tune --max-drop 1 --time-budget 15` on the bundled model (ort-cpu, batch 8) as a child
process, its wall time against the budget + 10%, the size of its front and its fastest point; then the pick
re-measured independently with `mfdeploy eval DIR/best` (same backend and precision) and `mfdeploy bench DIR/best`
(ort-cpu, batch 8), against what tune.json recorded (targets: within 0.5 points and 10% speed).

`vitb32`: a random-weight ViT-B/32 CLIP saved as a checkpoint, `--pairs` shapes-world pairs as calibration and
evaluation JSONL, `mfdeploy tune --space quick --time-budget 20`: whether the front holds MoPE + INT8 at >= 4x
dense, and when that trial finished.

Every table prints the load average; time on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
CLI = [sys.executable, "-c", "import sys; from mfdeploy.cli import main; sys.exit(main())"]


def run(argv: list[str]) -> tuple[float, str]:
    """Run the CLI; returns (wall seconds, stderr); exits on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"mfdeploy {' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stderr


def front_rows(summary: dict) -> list[dict]:
    by_number = {r["number"]: r for r in summary["trials"]}
    return [by_number[n] for n in summary["front"]]


def show_front(summary: dict) -> None:
    print("| # | configuration | retention | drop pts | speed-up | latency ms | pick |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in front_rows(summary):
        mark = "pick" if r["number"] == summary["pick"]["number"] else ""
        print(f"| {r['number']} | {r['key']} | {r['quality']['retention']:.2%} | {r['quality']['drop_points']:.2f} | "
              f"{r['speed']['speedup']:.2f}x | {r['speed']['latency_ms']:.2f} | {mark} |")


def bundled(args: argparse.Namespace) -> None:
    out = Path(args.out)
    load0 = os.getloadavg()
    wall, _ = run(["tune", "--max-drop", "1", "--time-budget", str(args.budget), "--out", str(out), "--force"])
    load1 = os.getloadavg()
    summary = json.loads((out / "tune.json").read_text())
    front = front_rows(summary)
    pick = next(r for r in summary["trials"] if r["number"] == summary["pick"]["number"])
    complete = [r for r in summary["trials"] if r["state"] == "complete"]
    print(f"## mfdeploy tune --max-drop 1 --time-budget {args.budget:g} (bundled model, ort-cpu, batch 8)\n")
    print(f"load average before {load0}, after {load1}")
    print(f"wall {wall:.0f} s against {args.budget * 60 * 1.1:.0f} s (budget + 10%): "
          f"{'within' if wall <= args.budget * 66 else 'OVER'}; trials {len(summary['trials'])} "
          f"({len(complete)} complete); front {len(front)} points, fastest "
          f"{max(r['speed']['speedup'] for r in front):.2f}x dense; stopped: {summary['time']['stopped']}\n")
    show_front(summary)
    # the pick, re-measured by the commands a user would run
    precision = pick["config"]["precision"]
    backend = "onnx-int8" if precision == "int8" else "onnx"
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "eval.json"
        run(["eval", str(out / "best"), "--backend", backend, "--no-retention", "--json", str(result_path)])
        result = json.loads(result_path.read_text())
        load2 = os.getloadavg()
        run(["bench", str(out / "best"), "--backends", "ort-cpu", "--batch-sizes", "8"])
        load3 = os.getloadavg()
    tasks = result["tasks"]
    mean = sum(tasks.values()) / len(tasks)
    rows = json.loads((out / "best" / "bench.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    variant = "int8" if precision == "int8" else "pruned"
    p50 = {(r["variant"], r["tower"]): r["p50_ms"] for r in rows if r.get("batch") == 8 and "p50_ms" in r}
    cand = p50[(variant, "vision")] + p50[(variant, "text")]
    dense = p50[("dense", "vision")] + p50[("dense", "text")]
    speedup = dense / cand
    recorded = pick["speed"]["speedup"]
    print(f"\n## The pick #{pick['number']} {pick['key']} re-measured (load {load2} after eval, {load3} after bench)\n")
    print("| measure | tune.json | re-measured | difference | target |")
    print("|---|---:|---:|---:|---|")
    print(f"| mean accuracy (mfdeploy eval --backend {backend}) | {pick['quality']['value']:.4f} | {mean:.4f} | "
          f"{abs(mean - pick['quality']['value']) * 100:.2f} points | <= 0.5 points |")
    print(f"| speed-up over dense (mfdeploy bench, batch 8, vision + text p50) | {recorded:.2f}x | {speedup:.2f}x | "
          f"{abs(speedup / recorded - 1):.1%} | <= 10% |")
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "pareto.png", args.figure)
        print(f"\ncopied {out / 'pareto.png'} to {args.figure}")


def vitb32(args: argparse.Namespace) -> None:
    from scale import build, write_pairs

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "vitb32"
        build("b32", args.smoke, model)
        image = json.loads((model / "config.json").read_text())["vision_config"]["image_size"]
        pairs = write_pairs(root, args.pairs, image)
        load0 = os.getloadavg()
        wall, _ = run(["tune", "--model", str(model), "--calib", str(pairs), "--eval", str(pairs), "--space", "quick",
                       "--time-budget", str(args.budget), "--max-drop", "100", "--out", str(out), "--force"])
        load1 = os.getloadavg()
    summary = json.loads((out / "tune.json").read_text())
    elapsed, found = 0.0, None
    for r in summary["trials"]:
        elapsed += r["seconds"]["total"]
        if r["state"] == "complete" and r["config"]["method"] == "mope" and r["config"]["precision"] == "int8" \
                and r["speed"]["speedup"] >= 4 and r["number"] in summary["front"] and found is None:
            found = (r, elapsed)
    print(f"## mfdeploy tune --space quick --time-budget {args.budget:g} (random ViT-B/32, ort-cpu, batch 8, "
          f"{args.pairs} pairs)\n")
    print(f"load average before {load0}, after {load1}; wall {wall:.0f} s; trials {len(summary['trials'])}; "
          f"stopped: {summary['time']['stopped']}\n")
    show_front(summary)
    if found:
        r, t = found
        print(f"\nMoPE + INT8 at >= 4x on the front: #{r['number']} {r['key']} {r['speed']['speedup']:.2f}x, "
              f"finished {t / 60:.1f} min into the search (target: within 20 min)")
    else:
        print("\nno MoPE + INT8 point at >= 4x on the front")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=("bundled", "vitb32"))
    parser.add_argument("--budget", type=float, default=None, help="minutes (default 15 bundled, 20 vitb32)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--figure", default=None, help="bundled: copy pareto.png here")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="vitb32: a tiny model of the same layout")
    args = parser.parse_args()
    args.budget = args.budget or (15.0 if args.target == "bundled" else 20.0)
    args.out = args.out or f"/tmp/tune-{args.target}"
    (bundled if args.target == "bundled" else vitb32)(args)


if __name__ == "__main__":
    main()
