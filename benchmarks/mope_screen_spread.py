"""How far MoPE's screened errors (oneDNN's GEMMs) lie from the exact ones, over every module of every layer.

    python benchmarks/mope_screen_spread.py [--model mfdeploy/clip-shapes | PATH | vitb32 | siglip-b16]
                                            [--pairs N] [--neuron-group 256] [--ratio 0.5] [--smoke]

Prunes the model with `--method mope` at `--ratio` with screening forced on
and every interval made wider than any gap, so that every module is scored
both ways (`mope_screen`), and prints per layer the largest difference
between a screened error and its exact value, in float32 ulps of the module's
loss and as a share of the interval screening gives it by default (64 ulps of
the loss, or 8x the largest difference seen before). Not a timing: the
differences depend on the kernels and the data, not on the machine's load.
`--pairs`: MoPE's calibration pairs (default: prune's own for a model,
8 for `vitb32` and `siglip-b16`, the random-weight layouts of `vitb32.py`;
`--smoke` makes those 2 layers wide 64).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, random_batches, siglip_b16, vitb32  # noqa: E402

from mfdeploy.data.batching import CalibSource  # noqa: E402
from mfdeploy.models import load  # noqa: E402
from mfdeploy.pruning import PruneConfig, prune_model  # noqa: E402
from mfdeploy.pruning.methods import mope, mope_screen  # noqa: E402
from mfdeploy.runtime import onednn  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mfdeploy/clip-shapes")
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--neuron-group", type=int, default=256)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if onednn.op() is None:
        sys.exit("this PyTorch build has no oneDNN linear: nothing to screen with")
    if args.model in ("vitb32", "siglip-b16"):
        model = (vitb32 if args.model == "vitb32" else siglip_b16)(smoke=args.smoke)
        adapter = WrappedAdapter(model)
        args.pairs = args.pairs or 8
        source: CalibSource | None = CalibSource("memory", batches=tuple(random_batches(model, args.pairs,
                                                                                          args.pairs)))
        group = min(args.neuron_group, 64) if args.smoke else args.neuron_group
    else:
        adapter, source = load(args.model), None
        inter = min(adapter.model.config.vision_config.intermediate_size,
                    adapter.model.config.text_config.intermediate_size)
        group = min(args.neuron_group, max(1, inter // 8))

    rows: list[tuple[float, float]] = []  # per layer part: largest difference in ulps, and in default intervals
    real_top_k, ulps, seen = mope_screen.top_k, mope_screen.ULPS, [0.0]

    def ulp32(x: float) -> float:
        return math.ulp(x) * 2.0 ** 29  # a float64 ulp times 2**29: float32's at that magnitude

    def spy(values, screened, k, bounds, exact):
        before = list(values)
        kept = real_top_k(values, screened, k, bounds, exact)
        in_ulps, in_intervals = 0.0, 0.0
        for f, e in zip(before, values):
            ulp = ulp32(max(abs(bounds.base), abs(bounds.base + e), 1e-30))
            in_ulps = max(in_ulps, abs(f - e) / ulp)
            in_intervals = max(in_intervals, abs(f - e) / max(ulps * ulp, mope_screen.SPREAD * seen[0]))
        rows.append((in_ulps, in_intervals))
        seen[0] = max([seen[0]] + [abs(f - e) for f, e in zip(before, values)])
        return kept

    mope_screen.top_k = spy
    mope_screen.ULPS = 2 ** 60  # every interval wider than every gap: every module is a close call
    mope.SCREEN = True
    try:
        cfg = PruneConfig(ratio=args.ratio, method="mope", mope_neuron_group=group, show_progress=False,
                          **({"calib_samples": args.pairs, "batch_size": args.pairs} if args.pairs else {}))
        prune_model(adapter, cfg, source=source)
    finally:
        mope_screen.top_k, mope_screen.ULPS, mope.SCREEN = real_top_k, ulps, None
    pairs = args.pairs or f"{cfg.calib_samples} (prune's default)"
    table = Table(title=f"Screened vs exact MoPE errors, {args.model}, {pairs} pairs, neuron group {group}")
    for col in ("layer part (heads, groups; vision, then text)", "largest difference, float32 ulps of the loss",
                "share of the default interval"):
        table.add_column(col, justify="right")
    for n, (in_ulps, in_intervals) in enumerate(rows):
        table.add_row(str(n + 1), f"{in_ulps:.1f}", f"{in_intervals:.1%}")
    console = Console()
    console.print(table)
    console.print(f"largest over every module: {max(r[0] for r in rows):.1f} float32 ulps of its loss, "
                  f"{max(r[1] for r in rows):.1%} of its default interval (which is at least {ulps} ulps; "
                  f"half of it ends screening); torch {torch.__version__}", highlight=False)

if __name__ == "__main__":
    main()
