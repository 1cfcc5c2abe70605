"""MoPE module scoring on ViT-B/32: full forwards per module (the reference) against replay, and replay + screening.

    python benchmarks/mope_scoring.py [--pairs 8] [--neuron-group 256] [--rounds 2] [--depth-share 0]
                                      [--threads 2] [--smoke]

Builds ViT-B/32 (`CLIPConfig()` defaults, random weights) and prunes a fresh
copy of it with `--method mope` at `--ratio` from `--pairs` random calibration
pairs three ways: scoring every head and neuron group with a full tower
forward (`mope.FAST_SCORING = False`, the reference), by replay from each
layer's inputs (`mope_replay`, `mope.SCREEN = False`), and by replay screened
with oneDNN's GEMMs, the close calls scored again exactly (`mope_screen`,
`mope.SCREEN = True`), rotating which runs first from round to round.
Asserts that all three keep the same modules (structure, depth errors and
pruned weights identical, bit for bit), that the replay's module errors equal
the reference's exactly and the screened ones lie within their interval,
then prints each run's seconds (width, depth, total), the close calls scored
again, the speed-ups of the medians over the reference, the load average
before and after, and the CPU. Target (issue 27): >= 2x with the same masks.
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
from mfdeploy.pruning.methods.mope_screen import SPREAD, ULPS, Bounds  # noqa: E402
from mfdeploy.runtime import onednn  # noqa: E402

PATHS = {"full forwards": (False, False), "replay": (True, False), "replay + screening": (True, True)}


def mope_screen_available() -> bool:
    return onednn.op() is not None


def run(dense: torch.nn.Module, cfg: PruneConfig, source: CalibSource, path: tuple[bool, bool]) \
        -> tuple[dict, dict, float]:
    """Prune a copy of `dense`; returns its record, its pruned state dict and the seconds `prune_model` took."""
    model = copy.deepcopy(dense)
    mope.FAST_SCORING, mope.SCREEN = path
    try:
        t0 = time.perf_counter()
        record = prune_model(WrappedAdapter(model), cfg, source=source)
        seconds = time.perf_counter() - t0
    finally:
        mope.FAST_SCORING, mope.SCREEN = True, None
    return record, model.state_dict(), seconds


VITB32_LINEARS = ((768, 2304), (768, 768), (768, 3072), (3072, 768))  # (in, out): fused q/k/v, out proj, fc1, fc2


def gemm_rates(rows: int = 400, shapes: tuple[tuple[int, int], ...] = VITB32_LINEARS) -> list[tuple[str, float, float]]:
    """GFLOP/s of PyTorch's `linear` and of oneDNN's (`mfdeploy.runtime.onednn`) at `shapes` (in, out)."""
    out = []
    g = torch.Generator().manual_seed(0)
    for k, n in shapes:
        x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
        flop = 2 * rows * k * n / 1e9
        slow = onednn.best(lambda x=x, w=w: torch.nn.functional.linear(x, w), 20, statistics.median)
        fast = onednn.best(lambda x=x, w=w: onednn.linear(x, w, None), 20, statistics.median)
        out.append((f"{rows}x{k} @ {k}x{n}", flop / slow, flop / fast))
    return out


def same(a: tuple[dict, dict, float], b: tuple[dict, dict, float], screened: bool) -> None:
    """The two runs kept the same modules, to the bit; their errors are equal (or, screened, within interval)."""
    (ra, sa, _), (rb, sb, _) = a, b
    for key in ("mope_depth", "structure", "dense_loss"):
        assert ra[key] == rb[key], f"{key} differs"
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), "pruned weights differ"
    for layer, want in ra["mope_width"].items():
        have = rb["mope_width"][layer]
        assert have["kept_heads"] == want["kept_heads"], f"{layer}: other heads kept"
        for part in ("heads", "neuron_groups"):
            left = set(have.get("screened", {}).get(part, [])) if screened else set()
            bounds = Bounds(ra["dense_loss"])  # the interval each screened value stood for
            bounds.seen = rb.get("z_screen", {}).get(layer.split(".")[0], {}).get("largest_difference", 0.0)
            for j, (e, f) in enumerate(zip(want.get(part, []), have.get(part, []))):  # none: kept whole
                tol = bounds.margin(e) if j in left else 0.0
                assert abs(e - f) <= tol, f"{layer} {part} {j}: {f} against {e}"


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
        order = list(PATHS)
        order = order[r % len(order):] + order[:r % len(order)]
        for name in order:
            result = run(dense, cfg, source, PATHS[name])
            runs[name].append(result)
            t, screens = result[0]["timings"], result[0].get("z_screen", {}).values()
            again = f"{sum(s['rescored_exactly'] for s in screens)} of {sum(s['screened'] for s in screens)}"
            rows.append((str(r + 1), name, f"{t['width_s']:.2f}", f"{t['depth_s']:.2f}", f"{result[2]:.2f}",
                         again if PATHS[name][1] else "-"))
            stopped = [s["stopped"] for s in screens if s["stopped"]]
            assert not (PATHS[name][1] and stopped), f"screening stopped: {stopped}"
        same(runs["full forwards"][-1], runs["replay"][-1], screened=False)
        same(runs["full forwards"][-1], runs["replay + screening"][-1], screened=True)
    rates = gemm_rates() if mope_screen_available() else []
    load1 = os.getloadavg()
    size = sum(p.numel() for p in dense.parameters()) / 1e6
    table = Table(title=f"MoPE scoring, {'smoke model' if args.smoke else 'ViT-B/32'} ({size:.0f}M params), "
                        f"{args.pairs} pairs, neuron group {group}, ratio {args.ratio}, depth share "
                        f"{args.depth_share}, {args.threads} threads")
    for col in ("round", "scoring", "width s", "depth s", "total s", "scored again exactly"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    median = {name: statistics.median(x[2] for x in runs[name]) for name in PATHS}
    console.print("structure, depth errors and pruned weights: identical in all three (bit for bit); module errors: "
                  f"replay = reference exactly, screened ones within their interval ({ULPS} float32 ulps of the loss, "
                  f"or {SPREAD}x the largest difference measured)")
    console.print(f"load average (1, 5, 15 min) before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
                  f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; CPU: {cpu_description()}", highlight=False)
    gemms = Table(title="fp32 GEMM, median of 20 (the linear layers of ViT-B/32 at 8 pairs)")
    for col in ("rows x in @ in x out", "PyTorch linear GFLOP/s", "oneDNN GFLOP/s", "oneDNN / linear"):
        gemms.add_column(col, justify="right")
    for shape, slow, fast in rates:
        gemms.add_row(shape, f"{slow:.0f}", f"{fast:.0f}", f"{fast / slow:.2f}x")
    if rates:
        console.print(gemms)
    for name in ("replay", "replay + screening"):
        console.print(f"speed-up {name} / full forwards (medians {median['full forwards']:.2f} s / "
                      f"{median[name]:.2f} s): {median['full forwards'] / median[name]:.2f}x (target >= 2x)",
                      highlight=False)

if __name__ == "__main__":
    main()
