"""Structured (MoPE) pruning on ViT-B/32: does the pruned vision tower really serve faster?

    python benchmarks/mope_vitb32.py [--ratio 0.5] [--batch 8] [--rounds 6] [--block 3] [--no-spin]

Builds ViT-B/32 (`CLIPConfig()` defaults, random weights), prunes it with
`--method mope` at `--ratio` (width only, MLP neuron groups of 256, 8 random
calibration pairs for the module-wise errors: the speed does not depend on
which heads survive), exports the dense and the pruned vision towers to ONNX,
checks the pruned export against PyTorch, and times both in ONNX Runtime
(CPU) at `--batch` in one run, in alternating blocks of back-to-back calls
(`time_blocks`, as `quantize_vitb32.py`: idle threads spinning, ONNX
Runtime's default, unless `--no-spin`). Target (issue 7): >= 1.6x.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, random_batches, vitb32  # noqa: E402

from mfdeploy.bench.timing import time_blocks  # noqa: E402
from mfdeploy.data.batching import CalibSource  # noqa: E402
from mfdeploy.exporting import export_towers  # noqa: E402
from mfdeploy.ortsession import ort_session  # noqa: E402
from mfdeploy.platform import cpu_description  # noqa: E402
from mfdeploy.progress import tqdm_reporter  # noqa: E402
from mfdeploy.pruning import PruneConfig, prune_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block", type=int, default=3, help="timed calls per block (after 50 ms of untimed ones)")
    ap.add_argument("--no-spin", action="store_true", help="sessions do not spin their idle threads")
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
        sessions = {name: ort_session(Path(tmp) / name / "vision.onnx", threads=args.threads, spin=not args.no_spin)
                    for name in ("dense", "pruned")}
        with torch.inference_mode():
            ref = pruned.vision_tower()(torch.from_numpy(x)).numpy()
        got = sessions["pruned"].run(None, {"pixel_values": x})[0]
        cosine = float((ref * got).sum(1).min())  # both L2-normalised
        load0 = os.getloadavg()
        times = time_blocks({n: lambda s=s: s.run(None, {"pixel_values": x}) for n, s in sessions.items()},
                            args.rounds, args.block)
        load1 = os.getloadavg()
    params = {n: sum(p.numel() for p in a.model.vision_model.parameters()) for n, a in
              (("dense", dense), ("pruned", pruned))}
    spin = "no spinning" if args.no_spin else "spinning"
    table = Table(title=f"ViT-B/32 vision tower, ONNX Runtime CPU, batch {args.batch}, {args.threads} threads "
                        f"({spin}), {args.rounds} rounds of {args.block} calls")
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
    console.print(f"load average before timing {load0[0]:.2f}, after {load1[0]:.2f}; CPU: {cpu_description()}",
                  highlight=False)
    console.print(f"[bold]speed-up pruned / dense: {thr['pruned'] / thr['dense']:.2f}x[/] (target >= 1.6x)")


if __name__ == "__main__":
    main()
