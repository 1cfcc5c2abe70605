"""INT8 towers on ViT-B/32 with ONNX Runtime (CPU): fp32 vs dynamic vs static INT8 vs MoPE 0.5 (+ INT8).

    python benchmarks/quantize_vitb32.py [--batch 8] [--text-len 77] [--rounds 5] [--block 3] [--threads 2]
                                         [--no-spin] [--smoke] [--keep DIR] [--family clip|siglip]

Builds ViT-B/32 (`CLIPConfig()` defaults, random weights), prunes a copy
with MoPE @ 0.5 (width only, as `benchmarks/mope_vitb32.py`), exports both,
and quantizes each with `mfdeploy.quantize` (the nodes `mfdeploy quantize`
picks: weight MatMuls and the patch Conv, final projections kept float):
"dynamic" (int8 weights per channel, activations from each batch) and
"static" (QDQ, uint8 activations calibrated on 4 random batches). Every
variant of a tower is timed in one run (vision at `--batch`, text at
`--batch` x `--text-len` tokens) in alternating blocks (`time_blocks`:
`--block` back-to-back calls of one graph after 50 ms of untimed ones, then the
next graph, `--rounds` times), so each graph runs as a serving process runs
it while machine load hits them alike. Sessions spin their idle threads, as
ONNX Runtime does by default; `--no-spin` turns that off (as `mfdeploy
serve` runs). Call-by-call interleaving of spinning sessions, what this
script did before, charged each call for the previous session's threads
still spinning on the same two cores: a fixed cost that hid most of the
INT8 graphs' speed (MoPE 0.5 vision INT8 read 59.6 ms interleaved, 35.0 ms
in blocks). The table gives the speed-up over dense fp32, the min cosine
of each INT8 graph against its own fp32 graph (random inputs), and the
file size. The load average is printed before and after: compare ratios
only within one run. `--smoke`: a 2-layer, width-64 model, to check the
script in seconds. `--family siglip`: the same on a SigLIP-base/16-sized
model (`vitb32.siglip_b16`; text at its one length, 64 tokens, no mask).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, random_batches, siglip_b16, vitb32  # noqa: E402

from mfdeploy.bench.timing import time_blocks  # noqa: E402
from mfdeploy.data.batching import CalibSource  # noqa: E402
from mfdeploy.exporting import export_towers  # noqa: E402
from mfdeploy.ortsession import ort_session  # noqa: E402
from mfdeploy.platform import cpu_description  # noqa: E402
from mfdeploy.pruning import PruneConfig, prune_model  # noqa: E402
from mfdeploy.quantize.nodes import plan_nodes  # noqa: E402
from mfdeploy.quantize.ort import quantize_ort  # noqa: E402

TOWER_FILES = {"vision": "vision.onnx", "text": "text.onnx"}


def feeds(model, batch: int, text_len: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of each tower (a SigLIP text tower takes `input_ids` alone: `only_inputs` drops the mask)."""
    b = random_batches(model, batch, batch, text_len=text_len, seed=seed)[0]
    return {"vision": {"pixel_values": b.pixel_values.numpy()},
            "text": {"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy()}}


def only_inputs(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The entries of `feed` that the graph at `path` takes."""
    import onnx

    names = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}
    return {k: v for k, v in feed.items() if k in names}


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--text-len", type=int, default=77)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=3, help="timed calls per block (after 50 ms of untimed ones)")
    ap.add_argument("--no-spin", action="store_true", help="sessions do not spin their idle threads")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--family", choices=("clip", "siglip"), default="clip",
                    help="clip: ViT-B/32; siglip: a SigLIP-base/16-sized model")
    ap.add_argument("--keep", type=Path, help="keep every graph here (dense/, MoPE 0.5/: fp32, dynamic, static)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    text_len = min(args.text_len, 77)
    dense = WrappedAdapter(siglip_b16(smoke=args.smoke) if args.family == "siglip" else vitb32(smoke=args.smoke))
    pruned = WrappedAdapter(copy.deepcopy(dense.model))
    calib = tuple(random_batches(dense.model, 8, 8))
    group = 32 if args.smoke else 256
    cfg = PruneConfig(ratio=0.5, method="mope", mope_neuron_group=group, calib_samples=8, batch_size=8,
                      show_progress=False)
    prune_model(pruned, cfg, source=CalibSource("memory", batches=calib))
    calib_feeds = feeds(dense.model, 8, text_len, seed=1), feeds(dense.model, 8, text_len, seed=2)
    calib_feeds += (feeds(dense.model, 8, text_len, seed=3), feeds(dense.model, 8, text_len, seed=4))
    test = feeds(dense.model, args.batch, text_len, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths: dict[str, dict[str, Path]] = {t: {} for t in TOWER_FILES}
        for name, adapter in (("dense", dense), ("MoPE 0.5", pruned)):
            export_towers(adapter, root / name)
            for tower, file in TOWER_FILES.items():
                src = root / name / file
                paths[tower][f"{name} fp32"] = src
                nodes = plan_nodes(src)["quantize"]
                for scheme in ("dynamic", "static"):
                    dst = root / name / f"{tower}.{scheme}.onnx"
                    quantize_ort(src, dst, nodes, [only_inputs(src, c[tower]) for c in calib_feeds], scheme)
                    paths[tower][f"{name} int8 {scheme}"] = dst
        load_before = os.getloadavg()
        for tower, variants in paths.items():
            sessions = {v: ort_session(p, threads=args.threads, spin=not args.no_spin) for v, p in variants.items()}
            fed = {v: only_inputs(p, test[tower]) for v, p in variants.items()}
            outs = {v: s.run(None, fed[v])[0] for v, s in sessions.items()}
            times = time_blocks({v: lambda s=s, f=fed[v]: s.run(None, f) for v, s in sessions.items()},
                                args.rounds, args.block)
            base = float(np.median(times["dense fp32"]))
            for v in sessions:
                med = float(np.median(times[v]))
                ref = outs[v.split(" int8")[0] + " fp32"] if "int8" in v else None
                rows.append((tower, v, med, base / med, min_cos(ref, outs[v]) if ref is not None else None,
                             variants[v].stat().st_size))
        load_after = os.getloadavg()
        if args.keep:
            shutil.copytree(root, args.keep, dirs_exist_ok=True)
    name = "SigLIP-base/16" if args.family == "siglip" else "ViT-B/32"
    text_len = dense.max_text_len if args.family == "siglip" else text_len
    table = Table(title=f"{name} ({'smoke' if args.smoke else 'random weights'}), ONNX Runtime "
                        f"{ort.__version__} CPU, {args.threads} threads "
                        f"({'no spinning' if args.no_spin else 'spinning'}), vision batch {args.batch}, text "
                        f"{args.batch} x {text_len} tokens, {args.rounds} rounds of {args.block} calls per graph")
    for col in ("tower", "graph", "median ms", "vs dense fp32", "min cosine vs its fp32", "MB"):
        table.add_column(col, justify="right" if col not in ("tower", "graph") else "left")
    for tower, v, med, ratio, cos, size in rows:
        table.add_row(tower, v, f"{1000 * med:.1f}", f"{ratio:.2f}x", "-" if cos is None else f"{cos:.5f}",
                      f"{size / 1e6:.1f}")
    console.print(table)
    console.print(f"load average (1, 5, 15 min) before timing: {load_before[0]:.2f} {load_before[1]:.2f} "
                  f"{load_before[2]:.2f}; after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} "
                  f"on {os.cpu_count()} CPUs", highlight=False)
    console.print(f"CPU: {cpu_description()}", highlight=False)
    for tower, target in (("vision", 2.5), ("text", 2.0)):
        best = max((r for r in rows if r[0] == tower and r[1].startswith("dense int8")), key=lambda r: r[3])
        console.print(f"{tower}: best dense int8 = {best[1]} at {best[3]:.2f}x (target >= {target}x)", highlight=False)
    mope = max((r for r in rows if r[0] == "vision" and r[1].startswith("MoPE 0.5 int8")), key=lambda r: r[3])
    console.print(f"vision: MoPE 0.5 + int8 = {mope[1]} at {mope[3]:.2f}x dense fp32 (target >= 4x)", highlight=False)


if __name__ == "__main__":
    main()
