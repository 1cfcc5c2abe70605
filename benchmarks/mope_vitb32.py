"""Structured (MoPE) pruning on ViT-B/32: does the pruned vision tower really serve faster?

    python benchmarks/mope_vitb32.py [--ratio 0.5] [--batch 8]

Builds ViT-B/32 (`CLIPConfig()` defaults, random weights), prunes it with
`--method mope` at `--ratio` (width only, MLP neuron groups of 256, 8 random
calibration pairs for the module-wise errors: the speed does not depend on
which heads survive), exports the dense and the pruned vision towers to ONNX,
checks the pruned export against PyTorch, and times both in ONNX Runtime
(CPU) at `--batch`, interleaved, in one run. Target (issue 7): >= 1.6x.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, random_batches, vitb32  # noqa: E402

from mfdeploy.data.batching import CalibSource  # noqa: E402
from mfdeploy.export import export_towers  # noqa: E402
from mfdeploy.progress import tqdm_reporter  # noqa: E402
from mfdeploy.prune import PruneConfig, prune_model  # noqa: E402


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense = WrappedAdapter(vitb32())
    pruned = WrappedAdapter(copy.deepcopy(dense.model))
    source = CalibSource("memory", batches=tuple(random_batches(dense.model, 8, 8)))
    cfg = PruneConfig(ratio=args.ratio, method="mope", mope_neuron_group=256, calib_samples=8, batch_size=8)
    t0 = time.perf_counter()
    with tqdm_reporter() as reporter:
        record = prune_model(pruned, cfg, source=source, reporter=reporter)
    prune_s = time.perf_counter() - t0
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        export_towers(dense, Path(tmp) / "dense")
        export_towers(pruned, Path(tmp) / "pruned")
        sessions = {name: session(Path(tmp) / name / "vision.onnx", args.threads) for name in ("dense", "pruned")}
        with torch.inference_mode():
            ref = pruned.vision_tower()(torch.from_numpy(x)).numpy()
        got = sessions["pruned"].run(None, {"pixel_values": x})[0]
        cosine = float((ref * got).sum(1).min())  # both L2-normalised
        times: dict[str, list[float]] = {"dense": [], "pruned": []}
        for _ in range(3):  # warm-up
            for s in sessions.values():
                s.run(None, {"pixel_values": x})
        for _ in range(args.iters):  # interleaved: noise hits both alike
            for name, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {"pixel_values": x})
                times[name].append(time.perf_counter() - t)
    params = {n: sum(p.numel() for p in a.model.vision_model.parameters()) for n, a in
              (("dense", dense), ("pruned", pruned))}
    table = Table(title=f"ViT-B/32 vision tower, ONNX Runtime CPU, batch {args.batch}, {args.threads} threads")
    for col in ("model", "vision params", "median ms", "images/s"):
        table.add_column(col, justify="right")
    thr = {}
    for name in ("dense", "pruned"):
        med = float(np.median(times[name]))
        thr[name] = args.batch / med
        table.add_row(name, f"{params[name] / 1e6:.1f}M", f"{1000 * med:.1f}", f"{thr[name]:.1f}")
    console = Console()
    console.print(table)
    console.print(f"mope @ {args.ratio}: prunable parameters removed {record['sparsity']['overall']:.3f} "
                  f"(vision {record['sparsity']['per_modality']['vision']:.3f}); pruning took {prune_s:.0f}s")
    console.print(f"pruned ONNX vs PyTorch: min cosine {cosine:.6f}")
    console.print(f"[bold]speed-up pruned / dense: {thr['pruned'] / thr['dense']:.2f}x[/] (target >= 1.6x)")


if __name__ == "__main__":
    main()
