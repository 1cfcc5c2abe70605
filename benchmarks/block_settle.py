"""What one runtime's idle threads do to the next one's timing, and how long `time_blocks` lets them settle.

    python benchmarks/block_settle.py [--rounds 9] [--block 5] [--threads 2] [--smoke]

Builds ViT-B/32 (`CLIPConfig()` defaults, random weights), exports it, and
times its text tower at batch 1 (16 tokens), the shortest call of the
BF16 table (`benchmarks/bf16_cpu.py`), through ONNX Runtime fp32 (its
sessions spinning, as mfdeploy's are, or not) and the bf16 torch runner
compiled (`--compile`), in alternating blocks (`time_blocks`). Each
configuration is timed with `settle=0` (one untimed call heads each block)
and with the default `settle` (untimed calls for 50 ms). The table gives
each runner's median, the speed-up of torch over ONNX Runtime, and torch's
median latency by its position in the block: the first timed calls after an
ONNX Runtime block share the cores with ONNX Runtime's spinning threads.
The load average is printed beside it. `--smoke`: a 2-layer, width-64 model.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, random_batches, vitb32  # noqa: E402

from mfdeploy.bench.timing import SETTLE_S, time_blocks  # noqa: E402
from mfdeploy.exporting import export_towers  # noqa: E402
from mfdeploy.platform import cpu_description  # noqa: E402
from mfdeploy.runtime.ort_runner import OrtRunner  # noqa: E402
from mfdeploy.runtime.torch_runner import TorchRunner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", "--tiny", action="store_true", help="a 2-layer, width-64 model")
    args = ap.parse_args()
    adapter = WrappedAdapter(vitb32(smoke=args.smoke))
    with tempfile.TemporaryDirectory(prefix="block-settle-") as tmp:  # the sessions hold the weights they read
        export_towers(adapter, Path(tmp) / "fp32")
        orts = {spin: OrtRunner(Path(tmp) / "fp32", threads=args.threads, spin=spin, towers=("text",))
                for spin in (True, False)}
    torch_runner = TorchRunner(adapter, threads=args.threads, dtype="bfloat16", compile=True)
    b = random_batches(adapter.model, 1, 1, text_len=16, seed=1)[0]
    feed = (b.input_ids.numpy(), b.attention_mask.numpy())
    torch_call = functools.partial(torch_runner.embed_texts, *feed)
    load_before = os.getloadavg()
    table = Table(title=f"ViT-B/32 text, batch 1, 16 tokens, {args.threads} threads: torch bf16 compiled after "
                        "ONNX Runtime fp32 blocks")
    for col in ("ONNX Runtime threads", "settle s", "ORT ms", "torch ms", "torch / ORT speed-up",
                "torch ms by position in its block"):
        table.add_column(col, justify="right")
    for spin in (True, False):
        ort_call = functools.partial(orts[spin].embed_texts, *feed)
        for settle in (0.0, SETTLE_S):
            times = time_blocks({"ort": ort_call, "torch": torch_call}, args.rounds, args.block, settle=settle)
            ort_ms, torch_ms = (1000 * float(np.median(times[k])) for k in ("ort", "torch"))
            by_position = 1000 * np.median(times["torch"].reshape(args.rounds, args.block), axis=0)
            table.add_row("spinning" if spin else "not spinning", f"{settle:g}", f"{ort_ms:.2f}", f"{torch_ms:.2f}",
                          f"{ort_ms / torch_ms:.2f}x", " ".join(f"{v:.1f}" for v in by_position))
    console = Console(width=160)
    console.print(table)
    load_after = os.getloadavg()
    console.print(f"load average (1, 5, 15 min) before timing {' '.join(f'{v:.2f}' for v in load_before)}, after "
                  f"{' '.join(f'{v:.2f}' for v in load_after)} on {os.cpu_count()} CPUs; CPU: {cpu_description()}",
                  highlight=False)


if __name__ == "__main__":
    main()
