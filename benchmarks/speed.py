"""Dense vs each method's pruned model on ONNX Runtime CPU: both towers, batch 1/8/32.

    python benchmarks/speed.py [--models bundled,vitb32] [--batch-sizes 1,8,32]

Rows of models not named in `--models` are kept from an existing speed.json.

For each model, builds the pruned variants in memory (unstructured
multiflow @ 0.5, multiflow 2:4, mope @ 0.5 width-only), exports every
variant's towers with `mfdeploy.exporting`, and times all variants of a cell
interleaved in one run (ONNX Runtime CPU EP, graph optimisation ALL,
intra-op threads = physical cores). The ViT-B/32 variants use magnitude
instead of multiflow (random weights need no calibration: the graph and the
speed are the same) and MoPE with 8 random calibration pairs. The
"+ int8" variant is the unstructured 0.5 model's towers quantized by
`mfdeploy.quantize` (the nodes `mfdeploy quantize` picks; `--int8-scheme`,
default auto: each tower's scheme as `mfdeploy quantize` ships it; the
static scheme is calibrated on 4 random batches here, which sets the
quantization ranges but not the speed). Writes speed.json and
speed.md next to this script (benchmarks/results/).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from quantize_vitb32 import feeds  # noqa: E402
from vitb32 import WrappedAdapter, random_batches, vitb32  # noqa: E402

from mfdeploy.bench.run import latency_stats as _stats  # noqa: E402
from mfdeploy.bench.timing import time_interleaved
from mfdeploy.data.batching import CalibSource  # noqa: E402
from mfdeploy.exporting import export_towers  # noqa: E402
from mfdeploy.models import load  # noqa: E402
from mfdeploy.platform import cpu_description  # noqa: E402
from mfdeploy.pruning import PruneConfig, prune_model  # noqa: E402
from mfdeploy.quantize.nodes import plan_nodes  # noqa: E402
from mfdeploy.quantize.ort import AUTO_SCHEME, quantize_ort  # noqa: E402
from mfdeploy.runtime.inputs import pixel_values, text_inputs  # noqa: E402
from mfdeploy.runtime.ort_runner import OrtRunner  # noqa: E402


def variants(name: str):
    """(label, adapter) pairs: dense first."""
    if name == "bundled":
        dense = load(None)
        specs = [("multiflow 0.5", dict(method="multiflow", calib="shapes")),
                 ("multiflow 2:4", dict(method="multiflow", pattern="2:4", calib="shapes")),
                 ("mope 0.5", dict(method="mope", calib="shapes"))]
        source = None
    else:
        dense = WrappedAdapter(vitb32())
        specs = [("magnitude 0.5", dict(method="magnitude")),
                 ("magnitude 2:4", dict(method="magnitude", pattern="2:4")),
                 ("mope 0.5", dict(method="mope", mope_neuron_group=256, calib_samples=8, batch_size=8))]
        source = CalibSource("memory", batches=tuple(random_batches(dense.model, 8, 8)))
    out = [("dense", dense)]
    for label, kw in specs:
        adapter = copy.deepcopy(dense)
        cfg = PruneConfig(ratio=0.5, show_progress=False, **kw)
        prune_model(adapter, cfg, source=source if kw["method"] == "mope" else None)
        out.append((label, adapter))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bundled,vitb32")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--int8-scheme", default="auto", choices=["auto", "static", "dynamic"],
                    help="ONNX Runtime INT8 scheme of the '+ int8' variant (auto: per tower, as shipped)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    console = Console()
    rows = []
    loads: dict[str, list[float]] = {}
    batches = [int(b) for b in args.batch_sizes.split(",")]
    for model in args.models.split(","):
        vs = variants(model)
        with tempfile.TemporaryDirectory() as tmp:
            runners = {}
            for label, adapter in vs:
                d = Path(tmp) / label.replace(" ", "_").replace(":", "-")
                export_towers(adapter, d)
                runners[label] = OrtRunner(d, "cpu", spin=False)
                if label.endswith(" 0.5") and not label.startswith("mope"):  # the unstructured model, in INT8
                    q = Path(tmp) / f"{d.name}_int8"
                    q.mkdir()
                    for tower in ("vision", "text"):
                        scheme = AUTO_SCHEME[tower] if args.int8_scheme == "auto" else args.int8_scheme
                        length = min(16, adapter.max_text_len)
                        calib = [feeds(adapter.model, 8, length, seed)[tower] for seed in (1, 2, 3, 4)]
                        f = f"{tower}.onnx"
                        quantize_ort(d / f, q / f, plan_nodes(d / f)["quantize"], calib, scheme)
                    runners[f"{label} + int8"] = OrtRunner(q, "cpu", spin=False)
            dense = vs[0][1]
            size = dense.image_size
            text_len = min(16, dense.max_text_len)
            eos = dense.model.config.text_config.eos_token_id
            loads[model] = [os.getloadavg()[0]]
            for tower in ("vision", "text"):
                for b in batches:
                    if tower == "vision":
                        x = pixel_values(b, size)
                        calls = {k: (lambda r=r, x=x: r.embed_images(x)) for k, r in runners.items()}
                    else:
                        ids, mask = text_inputs(b, text_len, eos_token_id=eos if eos != 2 else 49407)
                        calls = {k: (lambda r=r, i=ids, m=mask: r.embed_texts(i, m)) for k, r in runners.items()}
                    lat = time_interleaved(calls, warmup=2, iters=args.iters, min_time=args.min_time)
                    base = _stats(lat["dense"], b)["throughput"]
                    for label, values in lat.items():
                        st = _stats(values, b)
                        rows.append({"model": model, "variant": label, "tower": tower, "batch": b,
                                     "throughput": st["throughput"], "p50_ms": st["p50_ms"],
                                     "vs_dense": st["throughput"] / base})
                    console.print(f"{model} {tower} b{b}: " + ", ".join(
                        f"{r['variant']} {r['throughput']:.0f}/s ({r['vs_dense']:.2f}x)" for r in rows[-len(lat):]))
            loads[model].append(os.getloadavg()[0])
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "speed.json"
    if previous.exists():  # keep the rows of models not measured now (each model's cells are one run's)
        measured = set(args.models.split(","))
        kept = [r for r in json.loads(previous.read_text()) if r["model"] not in measured]
        order = ["bundled", "vitb32"]
        rows = sorted(kept + rows, key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    previous.write_text(json.dumps(rows, indent=2))
    lines = ["| model | tower | batch | variant | items/s | p50 ms | vs dense |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['tower']} | {r['batch']} | {r['variant']} | {r['throughput']:.1f} | "
              f"{r['p50_ms']:.2f} | {r['vs_dense']:.2f}x |" for r in rows]
    lines += ["", f"CPU: {cpu_description()}; load average (1 min) before / after timing: " + ", ".join(
        f"{m} {a:.2f} / {b:.2f}" for m, (a, b) in loads.items()) + f" on {os.cpu_count()} CPUs"]
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    console.print("\n".join(lines))



if __name__ == "__main__":
    main()
