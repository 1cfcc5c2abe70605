"""The eager float32 torch runner on the CPU with PyTorch's `linear` and with oneDNN's GEMM, against ONNX Runtime.

    python benchmarks/torch_linear.py [--batches 1,8] [--text-len 16] [--threads 2] [--rounds 7] [--smoke]
                                      [--out DIR]

ViT-B/32 (`CLIPConfig()` defaults, random weights), exported once. Three
runners over the same weights, timed in one process in alternating blocks
(`time_blocks`), per tower and batch: ONNX Runtime fp32 over the export
(`--backend ort-cpu`), and `TorchRunner(dtype="float32")` (`--backend
torch`) with `onednn_linear=False` (PyTorch's `linear`, MKL's sgemm) and
`onednn_linear=True` (every plain linear through oneDNN's GEMM,
`mfdeploy.runtime.onednn`; what the runner does by default where that GEMM is
measured faster). First, the GFLOP/s of both GEMMs at ViT-B/32's linear
shapes. The table also gives each oneDNN tower's largest difference from
PyTorch's `linear` (the two round differently). Prints the load average
beside every table. `--smoke`: a 2-layer, width-64 model, to check the
script in seconds. Writes torch_linear.md into `--out` (default
benchmarks/results; not with `--smoke` unless `--out` is given).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import mope_scoring  # noqa: E402
from vitb32 import WrappedAdapter, random_batches, vitb32  # noqa: E402

from mfdeploy.bench.timing import time_blocks  # noqa: E402
from mfdeploy.exporting import export_towers  # noqa: E402
from mfdeploy.platform import cpu_description  # noqa: E402
from mfdeploy.runtime import onednn  # noqa: E402
from mfdeploy.runtime.ort_runner import OrtRunner  # noqa: E402
from mfdeploy.runtime.torch_runner import TorchRunner  # noqa: E402


def gemm_rates(rows: int) -> list[str]:
    lines = ["| GEMM (rows x in @ in x out) | linear GFLOP/s | oneDNN GFLOP/s | oneDNN / linear |",
             "|---|---:|---:|---:|"]
    shapes = ((768, 768), (768, 3072), (3072, 768), (512, 2048))  # ViT-B/32's: vision q/k/v/out, fc1, fc2; text fc1
    for shape, slow, fast in mope_scoring.gemm_rates(rows, shapes):
        lines.append(f"| {shape} | {slow:.0f} | {fast:.0f} | {fast / slow:.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--smoke", "--tiny", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if onednn.op() is None:
        sys.exit("this PyTorch build has no oneDNN linear: nothing to compare")
    torch.set_num_threads(args.threads)
    lines = [f"CPU: {cpu_description()}; torch {torch.__version__}, {args.threads} threads", "",
             f"load average before the GEMMs: {os.getloadavg()}", ""] + gemm_rates(8 if args.smoke else 400)
    adapter = WrappedAdapter(vitb32(smoke=args.smoke))
    with tempfile.TemporaryDirectory(prefix="torch-linear-") as tmp:  # the session holds the weights it read
        export_towers(adapter, Path(tmp) / "fp32")
        ort = OrtRunner(Path(tmp) / "fp32", threads=args.threads, spin=True)
    runners = {"ort": ort, "linear": TorchRunner(adapter, dtype="float32", onednn_linear=False),
               "oneDNN": TorchRunner(adapter, dtype="float32", onednn_linear=True)}
    lines += ["", f"ViT-B/32 (random weights{', smoke' if args.smoke else ''}), float32, text {args.text_len} "
              f"tokens; median ms of {args.rounds} alternating blocks; load average before: {os.getloadavg()}", "",
              "| tower | batch | ONNX Runtime ms | torch linear ms | torch oneDNN ms | oneDNN / linear | "
              "ORT / oneDNN | max abs diff |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for tower in ("text", "vision"):
        for batch in (int(b) for b in args.batches.split(",")):
            b = random_batches(adapter.model, batch, batch, text_len=args.text_len, seed=batch)[0]
            feed = ((b.input_ids.numpy(), b.attention_mask.numpy()) if tower == "text" else (b.pixel_values.numpy(),))
            calls = {name: functools.partial(r.embed_texts if tower == "text" else r.embed_images, *feed)
                     for name, r in runners.items()}
            ms = {k: 1000 * float(np.median(v)) for k, v in time_blocks(calls, args.rounds, 3).items()}
            diff = float(np.abs(calls["oneDNN"]() - calls["linear"]()).max())
            lines.append(f"| {tower} | {batch} | {ms['ort']:.1f} | {ms['linear']:.1f} | {ms['oneDNN']:.1f} | "
                         f"{ms['linear'] / ms['oneDNN']:.2f}x | {ms['ort'] / ms['oneDNN']:.2f}x | {diff:.1e} |")
    lines += ["", f"load average after: {os.getloadavg()}"]
    text = "\n".join(lines)
    print(text)
    out_dir = args.out if args.out is not None else (None if args.smoke else HERE / "results")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "torch_linear.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
