"""Recovery cost on ViT-B/32: distillation time per step and peak memory (issue 15).

    python benchmarks/distill_vitb32.py [--pairs 256] [--batch-size 32] [--steps 50] [--smoke]

ViT-B/32 (`CLIPConfig()` defaults, random weights) pruned with MULTIFLOW at
0.5 through `prune_model`, then distilled from its dense copy exactly as
`mfdeploy prune --distill-steps` does (masks held fixed, one batch held out,
evaluated every 5 steps, but never stopping early, so that every step is
timed: random weights give the held-out loss nothing to improve on):
`--pairs` training pairs plus one held-out batch.
Prints the pruning time, the distillation time (total and per step), the
held-out loss before and after, and the process's RSS before and at its peak,
with the load average beside the table. Random weights measure the cost, not
the quality.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import threading
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, random_batches, vitb32  # noqa: E402

from mfdeploy.models.inputs import CalibSource  # noqa: E402
from mfdeploy.platform import current_rss_mb, peak_rss_mb  # noqa: E402
from mfdeploy.pruning import PruneConfig, prune_model  # noqa: E402
from mfdeploy.pruning.distill import recover  # noqa: E402
from mfdeploy.pruning.result import PruneContext  # noqa: E402


class RssSampler:
    """The largest RSS seen while the block runs, sampled from a thread (ru_maxrss would include pruning's)."""

    def __enter__(self) -> RssSampler:
        self.peak, self._stop = current_rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, current_rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a 2-layer model: check the script in seconds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    model = vitb32(smoke=args.smoke)
    adapter = WrappedAdapter(model)
    n_params = sum(p.numel() for p in model.parameters())
    # training pairs + one held-out batch (an in-memory source holds out its last batch)
    batches = random_batches(model, args.pairs + args.batch_size, args.batch_size)
    source = CalibSource("memory", batches=tuple(batches))
    cfg = PruneConfig(ratio=0.5, method="multiflow", batch_size=args.batch_size, calib_samples=args.pairs,
                      distill_steps=args.steps, show_progress=False)
    t0 = time.perf_counter()
    teacher = copy.deepcopy(model).eval()
    record = prune_model(adapter, PruneConfig(**{**cfg.__dict__, "distill_steps": 0}), source=source)
    prune_s = time.perf_counter() - t0
    rss_before, peak_before = current_rss_mb(), peak_rss_mb()
    ctx = PruneContext(adapter, adapter.prunable_layers(), cfg, source, None, "modality",
                       used=args.pairs + args.batch_size)
    # the distillation step, as prune_model runs it (timed inside: teacher targets, steps, held-out evaluations)
    with RssSampler() as sampler:
        d = recover(ctx, teacher, record["_masks"], patience=0)  # time every step: no early stop
    peak_after = sampler.peak
    load1 = os.getloadavg()
    table = Table(title=f"distillation on ViT-B/32 ({n_params / 1e6:.0f}M params{', SMOKE' if args.smoke else ''}), "
                        f"MULTIFLOW 0.5, {d['train_pairs']} training pairs + {d['held_out_pairs']} held out, "
                        f"batch {args.batch_size}, {args.threads} threads")
    for col in ("what", "value"):
        table.add_column(col)
    rows = [
        ("pruning (statistics, scores, masks)", f"{prune_s:.1f} s"),
        ("distillation steps run", f"{d['steps_run']} of {d['steps']} (lr {d['lr']:g}, {d['params']} weights, "
                                   f"{d['trained_parameters'] / 1e6:.0f}M trained)"),
        ("distillation time (teacher targets, steps, held-out checks)", f"{d['seconds']:.1f} s"),
        ("per step", f"{d['seconds'] / max(1, d['steps_run']):.2f} s"),
        ("train loss first -> last", f"{d['loss_first']:.4g} -> {d['loss_last']:.4g}"),
        ("held-out loss first -> best", f"{d['held_out_loss_first']:.4g} -> {d['held_out_loss_best']:.4g}"),
        ("RSS before distillation (model + teacher + batches)", f"{rss_before / 1024:.2f} GB"),
        ("peak RSS during pruning", f"{peak_before / 1024:.2f} GB"),
        ("peak RSS during distillation (sampled every 10 ms)", f"{peak_after / 1024:.2f} GB"),
        ("model fp32 size", f"{n_params * 4 / 1e9:.2f} GB"),
    ]
    for row in rows:
        table.add_row(*row)
    console = Console(width=140)
    console.print(table)
    console.print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (1 min); {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
