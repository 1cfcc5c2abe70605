"""`--compile` on the CPU: inductor with freezing alone against the settings the runner uses, each in a fresh process.

    python benchmarks/compile_settings.py [--pairs 3] [--batches 1,8] [--text-len 16] [--threads 2]
                                          [--variants freezing,runner] [--smoke] [--out DIR]

Each variant runs in a process of its own (a process holding two compiled
copies of a tower cannot compare them: dynamo looks every call up among
the graphs of both copies, so whichever was compiled first pays for the
other's guards). The processes alternate, `--pairs` times. Each builds
ViT-B/32 (`CLIPConfig()` defaults, random weights), exports it, and times
ONNX Runtime fp32 over the export against the bf16 torch runner compiled
with the variant's settings (`TorchRunner(dtype="bfloat16", compile=True)`,
as `--backend torch --dtype bfloat16 --compile`), interleaved in
alternating blocks (`time_blocks`), per tower and batch. Variants:

    freezing         inductor's default mode with freezing, nothing else (the runner's settings before)
    runner           what `mfdeploy.runtime.compiled` does: freezing, cpp_wrapper, enable_concat_linear, and each
                     tower through a function of its own without dynamo's module guards
    module-guards    the runner's settings with the tower compiled as a module, its guards kept (the runner
                     before it dropped them)
    no-cpp-wrapper, no-concat-linear
                     the runner's settings less one
    no-prepack       the runner's settings with `cpp.weight_prepack` off: the frozen weights stay plain tensors
                     instead of oneDNN's packed ones, which inductor's FX graph cache cannot store ("mkldnn
                     tensors unpickleable"), so a later process reads its graphs from the cache

Each variant has an inductor cache directory of its own, new for the run:
its first process compiles from nothing, the later ones find what the
first left (the "compile s" column gives both, and the FX graph cache's
hits, misses and bypasses).

The table gives, per variant and cell, the median over the processes of
torch's speed-up over ONNX Runtime fp32 measured in the same process, the
range, and each process's load average. `--smoke`: a 2-layer, width-64
model, to check the script in seconds. Writes compile_settings.json and
.md into `--out` (default benchmarks/results; not with `--smoke` unless
`--out` is given).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
VARIANTS = ("freezing", "runner", "module-guards", "no-cpp-wrapper", "no-concat-linear", "no-prepack")


def child(variant: str, batches: list[int], text_len: int, threads: int, smoke: bool) -> dict:
    """One process's measurement: {cell: speed-up over ORT fp32}, the compile seconds and the load average."""
    import time

    import torch

    sys.path.insert(0, str(HERE))
    from vitb32 import WrappedAdapter, random_batches, vitb32

    from mfdeploy.bench.timing import time_blocks
    from mfdeploy.exporting import export_towers
    from mfdeploy.runtime import compiled
    from mfdeploy.runtime.ort_runner import OrtRunner
    from mfdeploy.runtime.torch_runner import TorchRunner

    if variant == "freezing":
        compiled.CPU_CONFIG.clear()
        compiled.CPU_CONFIG["freezing"] = True
    drop = {"no-cpp-wrapper": "cpp_wrapper", "no-concat-linear": "cpp.enable_concat_linear"}.get(variant)
    if drop:
        del compiled.CPU_CONFIG[drop]
    if variant == "no-prepack":
        compiled.CPU_CONFIG["cpp.weight_prepack"] = False
    if variant in ("freezing", "module-guards"):  # the tower compiled as a module, dynamo's guards on it kept
        compiled._compile_frozen = lambda *args: None
    torch.set_num_threads(threads)
    adapter = WrappedAdapter(vitb32(smoke=smoke))
    with tempfile.TemporaryDirectory(prefix="compile-settings-") as tmp:  # the session holds the weights it read
        export_towers(adapter, Path(tmp) / "fp32")
        ort = OrtRunner(Path(tmp) / "fp32", threads=threads, spin=True)
    start = time.perf_counter()
    runner = TorchRunner(adapter, threads=threads, dtype="bfloat16", compile=True)
    compile_s = time.perf_counter() - start
    from torch._dynamo.utils import counters

    cache = {k.replace("fxgraph_cache_", ""): v for k, v in counters["inductor"].items()
             if k.startswith("fxgraph_cache")}
    load_before = os.getloadavg()
    cells = {}
    for tower in ("text", "vision"):
        for batch in batches:
            b = random_batches(adapter.model, batch, batch, text_len=text_len, seed=batch)[0]
            feed = ((b.input_ids.numpy(), b.attention_mask.numpy()) if tower == "text"
                    else (b.pixel_values.numpy(),))
            calls = {name: functools.partial(r.embed_texts if tower == "text" else r.embed_images, *feed)
                     for name, r in (("ort", ort), ("torch", runner))}
            times = time_blocks(calls, 9 if batch == 1 else 5, 5 if batch == 1 else 2)
            ort_ms, torch_ms = (1000 * float(np.median(times[k])) for k in ("ort", "torch"))
            cells[f"{tower} {batch}"] = {"ort_ms": ort_ms, "torch_ms": torch_ms, "speedup": ort_ms / torch_ms}
    return {"variant": variant, "compiled_with": runner.compiled_with, "compile_s": compile_s, "cache": cache,
            "cells": cells,
            "load_before": load_before, "load_after": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="processes per variant (they alternate)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="freezing,runner", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--smoke", "--tiny", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        print(json.dumps(child(args.child, batches, args.text_len, args.threads, args.smoke)))
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    runs = []
    caches = Path(tempfile.mkdtemp(prefix="compile-settings-cache-"))  # one inductor cache per variant, new
    for index in range(args.pairs):
        for variant in variants if index % 2 == 0 else variants[::-1]:
            cmd = [sys.executable, __file__, "--child", variant, "--batches", args.batches, "--text-len",
                   str(args.text_len), "--threads", str(args.threads)] + (["--smoke"] if args.smoke else [])
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(caches / variant)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"the {variant} process failed: {out.stderr.strip().splitlines()[-1:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(f"{variant:>16}  " + "  ".join(f"{c} {v['speedup']:.2f}x" for c, v in r["cells"].items())
                  + f"  compile {r['compile_s']:.0f} s ({r['cache']})  load {r['load_before'][0]:.2f}", flush=True)
    text = report(runs, variants, args)
    print(text)
    out_dir = args.out if args.out is not None else (None if args.smoke else HERE / "results")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compile_settings.json").write_text(json.dumps(runs, indent=1) + "\n")
        (out_dir / "compile_settings.md").write_text(text + "\n")


def report(runs: list[dict], variants: list[str], args) -> str:
    import torch

    from mfdeploy.platform import cpu_description

    cells = list(runs[0]["cells"])
    lines = [f"ViT-B/32 (CLIPConfig defaults, random weights{', smoke' if args.smoke else ''}), bf16 torch runner "
             f"compiled, {args.threads} threads, text {args.text_len} tokens, torch {torch.__version__}; speed-up "
             f"over ONNX Runtime fp32 in the same process, median (min-max) of {args.pairs} processes per variant",
             "", "| variant | " + " | ".join(cells) + " | compile s, first process / later | FX graph cache, later |",
             "|---|" + "---:|" * (len(cells) + 2)]
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        row = []
        for cell in cells:
            s = [r["cells"][cell]["speedup"] for r in mine]
            row.append(f"{np.median(s):.2f}x ({min(s):.2f}-{max(s):.2f})")
        later = [r["compile_s"] for r in mine[1:]]
        warm = f"{np.median(later):.0f}" if later else "-"
        cache = ", ".join(f"{k} {v}" for k, v in sorted(mine[-1].get("cache", {}).items())) if later else "-"
        lines.append(f"| {variant} | " + " | ".join(row) + f" | {mine[0]['compile_s']:.0f} / {warm} | {cache} |")
    lines += ["", "- settings: " + "; ".join(f"{v}: {next(r['compiled_with'] for r in runs if r['variant'] == v)}"
                                             for v in variants),
              "- load average (1 min) before each process's timing, in run order: "
              + ", ".join(f"{r['variant']} {r['load_before'][0]:.2f}" for r in runs) + " on "
              + f"{os.cpu_count()} CPUs",
              f"- CPU: {cpu_description()}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
