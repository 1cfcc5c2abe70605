"""Prune memory and time on ViT-B/32, ViT-L/14 and ViT-H/14-sized CLIPs (random weights), issue 16.

    python benchmarks/scale.py [--sizes b32,l14,h14] [--export] [--build] [--smoke] [--method multiflow] [--md OUT.md]

Builds each model here (random weights, fp32), saves it as a checkpoint
directory, writes 32 calibration pairs (shapes-world images resized to the
model's image size, with their captions), then runs

    mfdeploy prune --model DIR --ratio 0.5 --calib PAIRS.jsonl --calib-samples 32 --out OUT

as a child process and reads its peak RSS (`/usr/bin/time -v`, else
`getrusage(RUSAGE_CHILDREN)`) and wall time, and the step times from its
prune.json. One row per model and step; the last row of a model holds the
whole run: its peak RSS against the target, peak <= 2.5 x fp32 bytes + 0.5 GiB.
`--export` adds `mfdeploy export` of the pruned checkpoint (parity gate included)
against the same target; `--build` adds `mfdeploy build --ratio 0.5` from the
dense checkpoint with the same pairs, one row per stage (evaluation is skipped:
a model outside the bundle has no default evaluation data) and its peak.
`--smoke`: 2-layer, width-64 models of the same layouts, to check the script.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, siglip_b16  # noqa: E402

GB = 1024**3
# (vision, text, projection); vision: hidden, layers, heads, mlp, patch; text: hidden, layers, heads, mlp
SIZES = {
    "b32": None,  # CLIPConfig() defaults
    "l14": dict(vision=(1024, 24, 16, 4096, 14), text=(768, 12, 12, 3072), projection=768),
    "h14": dict(vision=(1280, 32, 16, 5120, 14), text=(1024, 24, 16, 4096), projection=1024),
    "siglip-b16": "siglip",  # SigLIP base patch16-224's layout (benchmarks/vitb32.siglip_b16)
}
NAMES = {"b32": "ViT-B/32", "l14": "ViT-L/14", "h14": "ViT-H/14", "siglip-b16": "SigLIP-B/16"}
STEPS = (("load", "load_s"), ("statistics", "calibration_s"), ("scoring+masking", "scoring_s"),
         ("write outputs", "write_s"))


def config(size: str, smoke: bool) -> CLIPConfig:
    spec = SIZES[size]
    if spec is None:
        vision, text, projection = (768, 12, 12, 3072, 32), (512, 12, 8, 2048), 512
    else:
        vision, text, projection = spec["vision"], spec["text"], spec["projection"]
    image = 224
    if smoke:  # the same layout, tiny
        vision, text, projection, image = (64, 2, 2, 256, vision[4]), (64, 2, 2, 256), 32, 4 * vision[4]
    hidden, layers, heads, mlp, patch = vision
    v = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
             patch_size=patch, image_size=image)
    hidden, layers, heads, mlp = text
    t = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp)
    return CLIPConfig(text_config=t, vision_config=v, projection_dim=projection)


def build(size: str, smoke: bool, out: Path) -> tuple[int, int]:
    """Save a random-weight model of this size into `out`; returns (parameters, fp32 bytes)."""
    torch.manual_seed(0)
    model = siglip_b16(smoke=smoke) if SIZES[size] == "siglip" else CLIPModel(config(size, smoke)).eval()
    params = sum(p.numel() for p in model.parameters())
    WrappedAdapter(model).save(out)
    del model
    gc.collect()
    return params, params * 4


def write_pairs(root: Path, n: int, image_size: int) -> Path:
    """`n` shapes-world image-caption pairs, images resized to the model's input size."""
    from mfdeploy.data import world

    lines = []
    for i, seed in enumerate(world.split_seeds("eval", n)):
        scene = world.make_scene(seed)
        scene.render().resize((image_size, image_size)).save(root / f"img{i}.png")
        lines.append(json.dumps({"image": f"img{i}.png", "caption": scene.caption()}))
    path = root / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_child(argv: list[str]) -> tuple[int, float, float, str]:
    """Run a command; returns (exit code, wall seconds, peak RSS bytes, stderr tail)."""
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    t0 = time.perf_counter()
    if timer:
        proc = subprocess.run([timer, "-v", *argv], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        peak = int(found.group(1)) * 1024 if found else float("nan")
    else:  # the largest child so far: run the sizes in increasing order
        proc = subprocess.run(argv, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return proc.returncode, wall, peak, proc.stderr[-2000:]


def bench(size: str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    work = tmp / size
    model_dir, out = work / "model", work / "pruned"
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    params, fp32 = build(size, args.smoke, model_dir)
    build_s = time.perf_counter() - t0
    image = json.loads((model_dir / "config.json").read_text())["vision_config"]["image_size"]
    pairs = write_pairs(work, args.pairs, image)
    cli = "import sys; from mfdeploy.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", cli, "prune", "--model", str(model_dir), "--ratio", "0.5",
            "--method", args.method, "--calib", str(pairs), "--calib-samples", str(args.pairs), "--out", str(out),
            *(["--neuron-group", str(args.neuron_group)] if args.method == "mope" else [])]
    rc, wall, peak, err = run_child(argv)
    if rc != 0:
        raise SystemExit(f"{NAMES[size]}: mfdeploy prune failed (exit {rc}):\n{err}")
    timings = json.loads((out / "prune.json").read_text())["timings"]
    target = 2.5 * fp32 + 0.5 * GB
    exported = None
    if args.export:  # the pruned checkpoint to ONNX, parity gate included, in its own child process
        export_argv = [sys.executable, "-c", cli, "export", str(out), "--out", str(work / "onnx")]
        rc, e_wall, e_peak, err = run_child(export_argv)
        if rc != 0:
            raise SystemExit(f"{NAMES[size]}: mfdeploy export failed (exit {rc}):\n{err}")
        exported = {"step": "mfdeploy export (whole run)", "seconds": e_wall, "peak_rss_bytes": e_peak,
                    "peak_over_fp32": e_peak / fp32, "target_bytes": target, "within_target": e_peak <= target}
    built = []
    if args.build:  # the whole `mfdeploy build` (evaluation skipped: no --eval for a model outside the bundle)
        build_argv = [sys.executable, "-c", cli, "build", "--model", str(model_dir), "--ratio", "0.5",
                      "--method", args.method, "--calib", str(pairs), "--calib-samples", str(args.pairs),
                      "--out", str(work / "build"), *(["--int8"] if args.int8 else []),
                      *(["--neuron-group", str(args.neuron_group)] if args.method == "mope" else [])]
        rc, b_wall, b_peak, err = run_child(build_argv)
        if rc != 0:
            raise SystemExit(f"{NAMES[size]}: mfdeploy build failed (exit {rc}):\n{err}")
        stages = json.loads((work / "build" / "build.json").read_text())["timings"]
        built = [{"step": f"build: {k[:-2].replace('_', ' ')}", "seconds": v} for k, v in stages.items()
                 if k.endswith("_s") and v]
        built.append({"step": "mfdeploy build (whole run)", "seconds": b_wall, "peak_rss_bytes": b_peak,
                      "peak_over_fp32": b_peak / fp32, "target_bytes": None, "within_target": None})
    shutil.rmtree(work)  # the next size needs the disk and the page cache
    base = {"model": NAMES[size] + (" (smoke)" if args.smoke else ""), "params": params, "fp32_bytes": fp32,
            "build_s": build_s, "loadavg": os.getloadavg()[0]}
    rows = [{**base, "step": step, "seconds": timings.get(key)} for step, key in STEPS]
    rows.append({**base, "step": "mfdeploy prune (whole run)", "seconds": wall, "peak_rss_bytes": peak,
                 "peak_over_fp32": peak / fp32, "target_bytes": target, "within_target": peak <= target})
    if exported is not None:
        rows.append({**base, **exported})
    rows += [{**base, **row} for row in built]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | params | fp32 | step | time (s) | peak RSS | peak / fp32 | target | met | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = r.get("peak_rss_bytes")
        cells = [r["model"], f"{r['params'] / 1e6:.0f}M", f"{r['fp32_bytes'] / GB:.2f} GiB", r["step"],
                 "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
                 "" if peak is None else f"{peak / GB:.2f} GiB",
                 "" if peak is None else f"{r['peak_over_fp32']:.2f}x",
                 "" if r.get("target_bytes") is None else f"{r['target_bytes'] / GB:.2f} GiB",
                 "" if r.get("within_target") is None else ("yes" if r["within_target"] else "NO"),
                 f"{r['loadavg']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="b32,l14",
                    help="comma-separated: b32, l14, h14, siglip-b16 (default: b32,l14)")
    ap.add_argument("--smoke", action="store_true", help="tiny models of the same layouts")
    ap.add_argument("--method", default="multiflow")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--export", action="store_true", help="also time `mfdeploy export` of each pruned model")
    ap.add_argument("--build", action="store_true",
                    help="also run `mfdeploy build --ratio 0.5` end to end (one row per stage, from build.json)")
    ap.add_argument("--int8", action="store_true", help="--build with --int8 (INT8 towers too)")
    ap.add_argument("--neuron-group", type=int, default=64, help="MoPE's MLP neurons per group (--method mope)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--md", type=Path, help="also write the markdown table here")
    args = ap.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown size(s) {', '.join(unknown)}: choose from {', '.join(SIZES)}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mfdeploy-scale-") as tmp:
        for size in sizes:
            rows += bench(size, args, Path(tmp))
            print(table([r for r in rows if r["model"].startswith(NAMES[size])]), flush=True)
    int8 = " + int8" if args.int8 else ""
    print(f"\n{args.method} 0.5{int8}, {args.pairs} pairs, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores; load average (1 min) per model in the table\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.md:
        args.md.write_text(table(rows) + "\n")


if __name__ == "__main__":
    main()
