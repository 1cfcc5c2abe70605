"""The bundled model's scores through every CPU backend and precision (issue 29): how far BF16 moves them.

    python benchmarks/bf16_retention.py [--builds multiflow,mope] [--out benchmarks/results]

Builds the bundled model twice with `mfdeploy build --int8` (MULTIFLOW 0.5;
MoPE 0.5 with distillation, as README's edge recipe) and evaluates each
build's pruned towers on the shapes suite with `mfdeploy eval BUILD --backend
B [--precision P | --dtype D] --no-retention --json`: torch fp32 (the
reference), ONNX Runtime fp32, OpenVINO f32, OpenVINO bf16, torch bf16,
ONNX Runtime INT8 and OpenVINO INT8. A row gives every task's accuracy,
retrieval R@1, the precision that ran, and the largest move of any score
against torch fp32 in points (issue 29's bar for bf16: 0.5). Quality only:
nothing is timed, so load does not matter. Writes bf16_retention.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BUILDS = {"multiflow": ["--ratio", "0.5"],
          "mope": ["--method", "mope", "--ratio", "0.5", "--depth-share", "0.5", "--distill-steps", "300"]}
# label -> eval options
RUNS = {"torch fp32": ["--backend", "torch"], "ORT fp32": ["--backend", "onnx"],
        "OpenVINO f32": ["--backend", "openvino", "--precision", "f32"],
        "OpenVINO bf16": ["--backend", "openvino", "--precision", "bf16"],
        "torch bf16": ["--backend", "torch", "--dtype", "bfloat16"],
        "ORT int8": ["--backend", "onnx-int8"], "OpenVINO int8": ["--backend", "openvino-int8"]}
CLI = [sys.executable, "-c", "import sys; from mfdeploy.cli import main; sys.exit(main())"]


def scores(result: dict) -> dict[str, float]:
    return {**result["tasks"], "i2t R@1": result["retrieval"]["i2t_r1"], "t2i R@1": result["retrieval"]["t2i_r1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builds", default=",".join(BUILDS))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bf16-retention-") as tmp:
        for name in args.builds.split(","):
            build = Path(tmp) / name
            subprocess.run([*CLI, "build", *BUILDS[name], "--int8", "--out", str(build)], check=True,
                           stdout=subprocess.DEVNULL)
            ref = None
            for label, options in RUNS.items():
                js = Path(tmp) / f"{name}-{label.replace(' ', '_')}.json"
                subprocess.run([*CLI, "eval", str(build), *options, "--no-retention", "--json", str(js)], check=True,
                               stdout=subprocess.DEVNULL)
                result = json.loads(js.read_text())
                s = scores(result)
                ref = ref or s
                move = max(abs(s[k] - ref[k]) for k in s) * 100
                rows.append({"build": name, "run": label, "precision": result.get("precision", "fp32"),
                             "scores": s, "max_move_points": round(move, 2)})
                print(f"{name:9s} {label:14s} {rows[-1]['precision']!s:10s} "
                      + " ".join(f"{k} {v:.3f}" for k, v in s.items()) + f"  max move {move:.2f} points", flush=True)
    keys = list(rows[0]["scores"])
    lines = ["| build | backend | precision | " + " | ".join(keys) + " | largest move vs torch fp32 (points) |",
             "|---|---|---|" + "---|" * len(keys) + "---|"]
    for r in rows:
        lines.append(f"| {r['build']} | {r['run']} | {r['precision']} | "
                     + " | ".join(f"{r['scores'][k]:.3f}" for k in keys) + f" | {r['max_move_points']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_retention.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "bf16_retention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
