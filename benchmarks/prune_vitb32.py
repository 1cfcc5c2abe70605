"""Prune-stage cost on ViT-B/32: statistics overhead, scoring+masking time, peak RSS.

    python benchmarks/prune_vitb32.py [--pairs 256] [--batch-size 32]

Prints, for 256 calibration pairs at batch 32 on this machine: the time of
plain forward passes over the same data, the time of the same passes with
the activation-statistics hooks, the scoring+masking time of MULTIFLOW (and
magnitude/wanda/2:4 for comparison), and the process's peak RSS.
Targets (issue 4): statistics overhead <= 15%, scoring+masking < 15 s, peak RSS < 2.5 GB.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, random_batches, vitb32  # noqa: E402

from mfdeploy.pruning import METHODS, collect_stats, compute_masks, sparsity_report  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = vitb32()
    adapter = WrappedAdapter(model)
    layers = adapter.prunable_layers()
    batches = random_batches(model, args.pairs, args.batch_size)
    vision, text = adapter.vision_tower(), adapter.text_tower()

    def plain() -> None:
        with torch.inference_mode():
            for b in batches:
                vision(b.pixel_values)
                text(b.input_ids, b.attention_mask)

    plain()  # warm-up (allocator, kernels), not timed
    rows = []
    # interleave plain and hooked passes so machine noise hits both alike
    t_plain, t_stats = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        plain()
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stats = collect_stats(adapter, layers, batches)
        t_stats.append(time.perf_counter() - t0)
    act = stats.norms()
    fwd, cal = min(t_plain), min(t_stats)
    rows.append(("plain forward passes (both towers)", f"{fwd:.1f} s", ""))
    overhead = f"overhead {100 * (cal / fwd - 1):+.1f}% (target <= 15%)"
    rows.append(("calibration with statistics", f"{cal:.1f} s", overhead))
    for method, pattern in (("multiflow", None), ("magnitude", None), ("wanda", None), ("multiflow", (2, 4))):
        t0 = time.perf_counter()
        budget = None if pattern else METHODS[method].default_budget  # the method's own budget
        masks, _ = compute_masks(layers, method, 0.5, budget, pattern, act)
        dt = time.perf_counter() - t0
        sp = sparsity_report(masks, layers)["overall"]
        label = f"scoring+masking {method}{' 2:4' if pattern else ''} @0.5"
        rows.append((label, f"{dt:.1f} s", f"sparsity {sp:.4f}" + (" (target < 15 s)" if method == "multiflow"
                                                                    and not pattern else "")))
        del masks
    rows.append(("peak RSS", f"{peak_rss_gb():.2f} GB", "target < 2.5 GB"))
    table = Table(title=f"prune stage on ViT-B/32 ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params), "
                        f"{args.pairs} pairs @ batch {args.batch_size}, {args.threads} threads")
    for col in ("step", "time", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


if __name__ == "__main__":
    main()
