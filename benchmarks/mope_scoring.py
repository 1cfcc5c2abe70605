"""MoPE module scoring on ViT-B/32: full forwards per module (the reference) against replay from each layer's inputs.

    python benchmarks/mope_scoring.py [--pairs 8] [--neuron-group 256] [--rounds 2] [--depth-share 0]
                                      [--threads 2] [--smoke]

Builds ViT-B/32 (`CLIPConfig()` defaults, random weights) and prunes a fresh
copy of it with `--method mope` at `--ratio` from `--pairs` random calibration
pairs, once scoring every head and neuron group with a full tower forward
(`mope.FAST_SCORING = False`) and once by replay (`mope_replay`: the layers
before the module's are not run again), alternating which runs first from
round to round. Asserts that both give the same module errors (every float,
exactly), the same structure and the same pruned weights, then prints each
run's seconds (width, depth, total), the speed-up of the medians, the load
average before and after, and the CPU. Target (issue 27): >= 2x.
`--smoke`: the same on a 2-layer, width-64 model, in seconds.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, random_batches, vitb32  # noqa: E402

from mfdeploy.data.batching import CalibSource  # noqa: E402
from mfdeploy.platform import cpu_description  # noqa: E402
from mfdeploy.pruning import PruneConfig, prune_model  # noqa: E402
from mfdeploy.pruning.methods import mope  # noqa: E402

PATHS = {"full forwards": False, "replay": True}


def run(dense: torch.nn.Module, cfg: PruneConfig, source: CalibSource, fast: bool) -> tuple[dict, dict, float]:
    """Prune a copy of `dense`; returns its record, its pruned state dict and the seconds `prune_model` took."""
    model = copy.deepcopy(dense)
    mope.FAST_SCORING = fast
    try:
        t0 = time.perf_counter()
        record = prune_model(WrappedAdapter(model), cfg, source=source)
        seconds = time.perf_counter() - t0
    finally:
        mope.FAST_SCORING = True
    return record, model.state_dict(), seconds


def same(a: tuple[dict, dict, float], b: tuple[dict, dict, float]) -> None:
    """The two runs chose alike from the same errors, to the bit."""
    (ra, sa, _), (rb, sb, _) = a, b
    for key in ("mope_width", "mope_depth", "structure", "dense_loss"):
        assert ra[key] == rb[key], f"{key} differs between full forwards and replay"
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), "pruned weights differ"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--neuron-group", type=int, default=256)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--depth-share", type=float, default=0.0)
    ap.add_argument("--rounds", type=int, default=2, help="each round runs both paths, the first one alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a 2-layer width-64 model (checks the script in seconds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense = vitb32(smoke=args.smoke)
    group = min(args.neuron_group, 64) if args.smoke else args.neuron_group
    source = CalibSource("memory", batches=tuple(random_batches(dense, args.pairs, args.pairs)))
    cfg = PruneConfig(ratio=args.ratio, method="mope", mope_neuron_group=group, mope_depth_share=args.depth_share,
                      calib_samples=args.pairs, batch_size=args.pairs, show_progress=False)
    load0 = os.getloadavg()
    runs: dict[str, list] = {name: [] for name in PATHS}
    rows = []
    for r in range(args.rounds):
        order = list(PATHS) if r % 2 == 0 else list(reversed(PATHS))
        for name in order:
            result = run(dense, cfg, source, PATHS[name])
            runs[name].append(result)
            t = result[0]["timings"]
            rows.append((str(r + 1), name, f"{t['width_s']:.2f}", f"{t['depth_s']:.2f}", f"{result[2]:.2f}"))
        same(runs["full forwards"][-1], runs["replay"][-1])
    load1 = os.getloadavg()
    size = sum(p.numel() for p in dense.parameters()) / 1e6
    table = Table(title=f"MoPE scoring, {'smoke model' if args.smoke else 'ViT-B/32'} ({size:.0f}M params), "
                        f"{args.pairs} pairs, neuron group {group}, ratio {args.ratio}, depth share "
                        f"{args.depth_share}, {args.threads} threads")
    for col in ("round", "scoring", "width s", "depth s", "total s"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    median = {name: statistics.median(x[2] for x in runs[name]) for name in PATHS}
    console.print("module errors, structure and pruned weights: identical (every float, bit for bit)")
    console.print(f"load average (1, 5, 15 min) before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
                  f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; CPU: {cpu_description()}", highlight=False)
    console.print(f"speed-up replay / full forwards (medians {median['full forwards']:.2f} s / "
                  f"{median['replay']:.2f} s): {median['full forwards'] / median['replay']:.2f}x (target >= 2x)",
                  highlight=False)


if __name__ == "__main__":
    main()
