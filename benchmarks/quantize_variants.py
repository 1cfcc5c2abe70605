"""Other INT8 graphs of one vision tower against the shipped static QDQ graph, timed in alternating blocks in one run.

    python benchmarks/quantize_vitb32.py --keep /tmp/q          # makes the graphs, MoPE 0.5 among them
    python benchmarks/quantize_variants.py "/tmp/q/MoPE 0.5/vision.onnx" [--rounds 4] [--block 3] [--threads 2]
                                           [--no-spin] [--profile]

Variants (each from the same fp32 tower and the same 4 random calibration
batches of 8 images, the nodes `mfdeploy quantize` picks):

- shipped: static QDQ, per-channel int8 weights, uint8 activations, the
  MatMul outputs left float (ONNX Runtime runs MatMulIntegerToFloat);
- MatMul outputs quantized: what shipped before, a Q after every MatMul
  (ONNX Runtime runs QLinearMatMul, then a DequantizeLinear before the bias);
- Conv output float too: the patch Conv's output also left unquantized;
- + attention MatMuls: the two activation-activation MatMuls per layer too;
- + Adds: every Add (bias and residual) too;
- clip-optimized: ONNX Runtime's transformers optimizer (`model_type="clip"`)
  first, then the shipped scheme.

Prints median ms at batch 8, speed against the fp32 tower and min cosine
against it, with the load average before and after. Timed as
`quantize_vitb32.py` times: alternating blocks of back-to-back calls, idle
threads spinning unless `--no-spin`; `--profile` adds the
shipped graph's kernel time by op type from ONNX Runtime's profiler.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mfdeploy.bench.timing import time_blocks  # noqa: E402
from mfdeploy.ortsession import ort_session  # noqa: E402
from mfdeploy.platform import cpu_description  # noqa: E402
from mfdeploy.quantize.nodes import WEIGHT_OPS, plan_nodes  # noqa: E402
from mfdeploy.quantize.ort import preprocess, quantize_ort, quantize_static_qdq  # noqa: E402


def variant(src: Path, dst: Path, calib: list[dict], more_nodes=(), more_ops=(), extra=None) -> Path:
    """The shipped static scheme with one thing changed (more nodes or op types, other quantizer options)."""
    pre = dst.with_suffix(".pre.onnx")
    preprocess(src, pre)
    quantize_static_qdq(pre, dst, plan_nodes(src)["quantize"] + list(more_nodes), calib,
                        op_types=WEIGHT_OPS + tuple(more_ops), extra_options=extra)
    return dst


def quantize_shipped(src: Path, dst: Path, calib: list[dict]) -> Path:
    """What `mfdeploy quantize --scheme static` writes: the same function, the same node plan."""
    quantize_ort(src, dst, plan_nodes(src)["quantize"], calib, "static")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="an fp32 vision tower (pixel_values [B,3,H,W])")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--block", type=int, default=3, help="timed calls per block (after 50 ms of untimed ones)")
    ap.add_argument("--no-spin", action="store_true", help="sessions do not spin their idle threads")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also print where the shipped graph's time goes, by op")
    args = ap.parse_args()
    graph = onnx.load(str(args.src), load_external_data=False).graph
    size = graph.input[0].type.tensor_type.shape.dim[2].dim_value  # the tower's image size
    rng = np.random.default_rng(1)
    calib = [{"pixel_values": rng.standard_normal((8, 3, size, size), dtype=np.float32)} for _ in range(4)]
    weight_nodes = set(plan_nodes(args.src)["quantize"])
    adds = [n.name for n in graph.node if n.op_type == "Add"]
    attention = [n.name for n in graph.node if n.op_type == "MatMul" and n.name not in weight_nodes
                 and "projection" not in n.name]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from onnxruntime.transformers.optimizer import optimize_model

        optimize_model(str(args.src), model_type="clip", num_heads=0, hidden_size=0,
                       opt_level=0).save_model_to_file(str(tmp / "clip.onnx"))
        paths = {
            "fp32": args.src,
            "shipped (static QDQ)": quantize_shipped(args.src, tmp / "shipped.onnx", calib),
            "MatMul outputs quantized": variant(args.src, tmp / "outq.onnx", calib, extra={}),
            "Conv output float too": variant(args.src, tmp / "convfloat.onnx", calib,
                                             extra={"OpTypesToExcludeOutputQuantization": ["MatMul", "Conv"]}),
            "+ attention MatMuls": variant(args.src, tmp / "attn.onnx", calib, more_nodes=attention),
            "+ Adds": variant(args.src, tmp / "adds.onnx", calib, more_nodes=adds, more_ops=["Add"]),
            "clip-optimized": quantize_shipped(tmp / "clip.onnx", tmp / "clipq.onnx", calib),
        }
        sessions = {k: ort_session(p, threads=args.threads, spin=not args.no_spin) for k, p in paths.items()}
        x = {"pixel_values": np.random.default_rng(0).standard_normal((8, 3, size, size), dtype=np.float32)}
        outs = {k: s.run(None, x)[0].astype(np.float64) for k, s in sessions.items()}
        load0 = os.getloadavg()
        times = time_blocks({k: lambda s=s: s.run(None, x) for k, s in sessions.items()}, args.rounds, args.block)
        load1 = os.getloadavg()
        shares = op_shares(paths["shipped (static QDQ)"], x, args.threads, tmp) if args.profile else None
    base, ref = float(np.median(times["fp32"])), outs["fp32"]
    print("| graph | median ms | vs fp32 | vs shipped | min cosine vs fp32 |\n|---|---:|---:|---:|---:|")
    shipped = float(np.median(times["shipped (static QDQ)"]))
    for k in sessions:
        med, o = float(np.median(times[k])), outs[k]
        cos = ((ref * o).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(o, axis=-1)).min()
        print(f"| {k} | {1000 * med:.1f} | {base / med:.2f}x | {shipped / med:.2f}x | {cos:.5f} |")
    print(f"\nload average before {load0[0]:.2f}, after {load1[0]:.2f}; {args.threads} threads "
          f"({'no spinning' if args.no_spin else 'spinning'}), batch 8, {args.rounds} rounds of {args.block} calls; "
          f"{cpu_description()}")
    if shares:
        print("\nshipped graph, ONNX Runtime profile (kernel time by op type, 3 runs):")
        for op, share in shares:
            print(f"  {op:24s} {100 * share:5.1f}%")


def op_shares(path: Path, feed: dict, threads: int, tmp: Path, runs: int = 3) -> list[tuple[str, float]]:
    """Share of kernel time per op type in ONNX Runtime's own profile, largest first."""
    import json
    from collections import Counter

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / "profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    session.run(None, feed)  # warm-up, counted out below by taking the last `runs` runs' share alike
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    return [(op, d / total) for op, d in by_op.most_common(8)]


if __name__ == "__main__":
    main()
