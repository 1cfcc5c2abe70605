"""BF16 on the CPU: ONNX Runtime, OpenVINO and PyTorch on ViT-B/32 in fp32, bf16 and INT8 (issue 29's table).

    python benchmarks/bf16_cpu.py [--batches 1,8] [--text-len 16] [--rounds 5] [--block 3] [--threads 2]
                                  [--no-spin] [--depth-shares 0,0.5] [--smoke] [--out DIR]

Builds ViT-B/32 (`CLIPConfig()` defaults, random weights) and a MoPE @ 0.5
copy (width only, as `benchmarks/quantize_vitb32.py`; `--depth-shares 0,0.5`
adds one whose ratio is half taken by whole layers, `--depth-share 0.5` as
README's edge build, its rows "MoPE 0.5 depth 0.5 ..."), exports each and
quantizes each as `mfdeploy quantize` does (`AUTO_SCHEME`: static QDQ
vision, dynamic text; the nodes `plan_nodes` picks), and once more with
`--scheme static` (a static QDQ text tower too: the INT8 graph OpenVINO runs
in INT8; it runs a dynamic one in float). Then, per tower and batch, it
times through mfdeploy's own runners:

    ORT fp32             ONNX Runtime over the fp32 graph (the baseline)
    OpenVINO f32/bf16    OpenVINO over the same ONNX file, inference precision forced
    torch fp32/bf16      PyTorch eager, the model and a bf16 copy of it
    torch bf16 compiled  the bf16 copy through `--compile` (inductor, weights frozen), compiled before timing
    ORT int8             ONNX Runtime over mfdeploy's INT8 graph (`--scheme auto`)
    ORT int8 static      text only: ONNX Runtime over the static QDQ text graph OpenVINO runs
    OpenVINO int8        OpenVINO over the static INT8 graphs (vision: the same graph as ORT int8), in
                         the CPU's native precision (`auto`)
    MoPE 0.5 ...         the pruned model: fp32 and INT8 on ONNX Runtime, static INT8 on OpenVINO

interleaved in alternating blocks (`time_blocks`: `--block` back-to-back
calls of one runner after 50 ms of untimed ones, then the next, `--rounds`
times), so each runs as a serving process runs it while machine load hits
them alike. Each row gives the median latency, the speed-up over ORT fp32
(dense), the min cosine against ORT fp32 of the same model (random inputs)
and the precision the runner reports it ran in (OpenVINO: read back from
the compiled model). The load average is printed beside the table, with
the CPU and what OpenVINO says it runs natively: compare ratios only within
one run, on a quiet machine. `--smoke` (or `--tiny`): a 2-layer, width-64
model, to check the script in seconds. Writes bf16_cpu.json and .md into
`--out` (default benchmarks/results; not with `--smoke` unless `--out` is given).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
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
from mfdeploy.platform import cpu_description, package_versions  # noqa: E402
from mfdeploy.pruning import PruneConfig, prune_model  # noqa: E402
from mfdeploy.quantize.nodes import plan_nodes  # noqa: E402
from mfdeploy.quantize.ort import AUTO_SCHEME, quantize_ort  # noqa: E402
from mfdeploy.runtime.base import BackendUnavailable  # noqa: E402
from mfdeploy.runtime.ort_runner import OrtRunner  # noqa: E402
from mfdeploy.runtime.torch_runner import TorchRunner  # noqa: E402

TOWER_FILES = {"vision": "vision.onnx", "text": "text.onnx"}
BASELINE = "ORT fp32"


def mope_label(depth_share: float) -> str:
    """The rows' name of a MoPE 0.5 model: "MoPE 0.5" (width only), "MoPE 0.5 depth 0.5" (half of it by layers)."""
    return "MoPE 0.5" if depth_share == 0 else f"MoPE 0.5 depth {depth_share:g}"


def prepare(root: Path, smoke: bool, text_len: int, depth_shares: list[float]) -> tuple[dict, dict[str, Path]]:
    """The dense adapter and a MoPE 0.5 one per depth share, and their fp32, INT8 (`--scheme auto`) and static INT8
    export folders (keys "dense fp32", "MoPE 0.5 depth 0.5 int8 static", ...)."""
    dense = WrappedAdapter(vitb32(smoke=smoke))
    calib = tuple(random_batches(dense.model, 8, 8))
    adapters = {"dense": dense}
    for share in depth_shares:
        pruned = adapters[mope_label(share)] = WrappedAdapter(copy.deepcopy(dense.model))
        cfg = PruneConfig(ratio=0.5, method="mope", mope_neuron_group=32 if smoke else 256, calib_samples=8,
                          batch_size=8, mope_depth_share=share, show_progress=False)
        prune_model(pruned, cfg, source=CalibSource("memory", batches=calib))
    calib_feeds = [feeds(dense.model, 8, text_len, seed) for seed in (1, 2, 3, 4)]
    folders = {}
    for index, (name, adapter) in enumerate(adapters.items()):
        fp32 = folders[f"{name} fp32"] = root / str(index) / "fp32"
        export_towers(adapter, fp32)
        for label, schemes in (("int8", AUTO_SCHEME), ("int8 static", dict.fromkeys(TOWER_FILES, "static"))):
            int8 = folders[f"{name} {label}"] = root / str(index) / label.replace(" ", "_")
            int8.mkdir(parents=True)
            for tower, file in TOWER_FILES.items():
                if schemes[tower] == AUTO_SCHEME[tower] and label != "int8":  # the same graph as --scheme auto
                    (int8 / file).symlink_to(folders[f"{name} int8"] / file)
                    continue
                quantize_ort(fp32 / file, int8 / file, plan_nodes(fp32 / file)["quantize"],
                             [c[tower] for c in calib_feeds], schemes[tower])
    return adapters, folders


def feeds(model, batch: int, text_len: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    b = random_batches(model, batch, batch, text_len=text_len, seed=seed)[0]
    return {"vision": {"pixel_values": b.pixel_values.numpy()},
            "text": {"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy()}}


def runners(tower: str, adapters: dict, folders: dict[str, Path], threads: int, spin: bool,
            skipped: dict[str, str], compiled: object) -> dict[str, object]:
    """Every runner of the table for one tower (one tower loaded each: half the memory; `compiled`, the compiled
    torch runner, holds both: compiling takes minutes); one that cannot run on this CPU (OpenVINO bf16 without
    BF16 instructions) goes into `skipped` with the reason."""
    from mfdeploy.runtime.openvino_runner import OpenVinoRunner

    ort = {"towers": (tower,), "threads": threads, "spin": spin}
    ov = {"towers": (tower,), "threads": threads}
    makers = {
        BASELINE: lambda: OrtRunner(folders["dense fp32"], **ort),
        "OpenVINO f32": lambda: OpenVinoRunner(folders["dense fp32"], precision="f32", **ov),
        "OpenVINO bf16": lambda: OpenVinoRunner(folders["dense fp32"], precision="bf16", **ov),
        "torch fp32": lambda: TorchRunner(adapters["dense"], threads=threads, dtype="float32"),
        "torch bf16": lambda: TorchRunner(adapters["dense"], threads=threads, dtype="bfloat16"),
        "torch bf16 compiled": lambda: _given(compiled, "torch bf16 compiled"),
        "ORT int8": lambda: OrtRunner(folders["dense int8"], **ort),
        "ORT int8 static": lambda: OrtRunner(folders["dense int8 static"], **ort),
        "OpenVINO int8": lambda: OpenVinoRunner(folders["dense int8 static"], precision="auto", **ov),
    }
    for mope in (name for name in adapters if name != "dense"):
        makers[f"{mope} ORT fp32"] = lambda m=mope: OrtRunner(folders[f"{m} fp32"], **ort)
        makers[f"{mope} ORT int8"] = lambda m=mope: OrtRunner(folders[f"{m} int8"], **ort)
        makers[f"{mope} OpenVINO int8"] = lambda m=mope: OpenVinoRunner(folders[f"{m} int8 static"], precision="auto",
                                                                        **ov)
    if AUTO_SCHEME[tower] == "static":  # ORT int8 already runs the static graph
        del makers["ORT int8 static"]
    out = {}
    for name, make in makers.items():
        try:
            out[name] = make()
        except BackendUnavailable as e:
            skipped.setdefault(name, str(e))
            continue
        if "ORT int8" in name:  # as `mfdeploy bench` labels the int8 towers: integer matmuls, float elsewhere
            out[name].precision = "int8+f32"
    return out


def compiled_runner(adapter, threads: int, skipped: dict[str, str]) -> TorchRunner | None:
    """The bf16 torch runner with both towers compiled (`--compile`), before any timing; None (and the reason in
    `skipped`) where torch.compile cannot run here."""
    try:
        return TorchRunner(adapter, threads=threads, dtype="bfloat16", compile=True)
    except BackendUnavailable as e:
        skipped["torch bf16 compiled"] = str(e)
        return None


def _given(runner, name: str):
    if runner is None:
        raise BackendUnavailable(f"{name}: not built")
    return runner


def call(runner, tower: str, feed: dict[str, np.ndarray]):
    if tower == "vision":
        return lambda: runner.embed_images(feed["pixel_values"])
    return lambda: runner.embed_texts(feed["input_ids"], feed["attention_mask"])


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def measure(tower: str, batch: int, runs: dict, feed: dict, rounds: int, block: int) -> list[dict]:
    calls = {name: call(r, tower, feed) for name, r in runs.items()}
    outs = {name: c() for name, c in calls.items()}
    times = time_blocks(calls, rounds, block)
    base = float(np.median(times[BASELINE]))
    rows = []
    for name, r in runs.items():
        model = name.split(" ORT ")[0].split(" OpenVINO ")[0] if name.startswith("MoPE") else None
        ref = outs[f"{model} ORT fp32" if model else BASELINE]  # each pruned model against its own fp32 towers
        med = float(np.median(times[name]))
        rows.append({"tower": tower, "batch": batch, "runtime": name, "median_ms": 1000 * med,
                     "vs_ort_fp32": base / med, "min_cosine": min_cos(ref, outs[name]),
                     "precision": r.tower_precision(tower), "calls": len(times[name])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--text-len", type=int, default=16, help="tokens per text (16: a typical caption)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=3, help="timed calls per block (after 50 ms of untimed ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-spin", action="store_true", help="ONNX Runtime sessions do not spin their idle threads")
    ap.add_argument("--smoke", "--tiny", action="store_true", help="a 2-layer, width-64 model")
    ap.add_argument("--depth-shares", default="0", help="MoPE 0.5 models to time, by --depth-share (e.g. 0,0.5: "
                    "one width only, one with half the ratio taken by whole layers)")
    ap.add_argument("--out", type=Path, help="where bf16_cpu.json/.md go (default benchmarks/results)")
    args = ap.parse_args()
    try:
        from mfdeploy.runtime.openvino_runner import cpu_capabilities, require_openvino

        require_openvino()
    except BackendUnavailable as e:
        raise SystemExit(f"bf16_cpu.py: {e}") from None
    torch.set_num_threads(args.threads)
    console = Console()
    batches = [int(b) for b in args.batches.split(",")]
    text_len = min(args.text_len, 77)
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bf16-cpu-") as tmp:
        adapters, folders = prepare(Path(tmp), args.smoke, text_len, [float(d) for d in args.depth_shares.split(",")])
        inputs = {b: feeds(adapters["dense"].model, b, text_len, seed=0) for b in batches}
        compiled = compiled_runner(adapters["dense"], args.threads, skipped)
        load_before = os.getloadavg()
        for tower in TOWER_FILES:
            runs = runners(tower, adapters, folders, args.threads, not args.no_spin, skipped, compiled)
            for batch in batches:
                rows += measure(tower, batch, runs, inputs[batch][tower], args.rounds, args.block)
            for r in runs.values():
                if r is not compiled:
                    r.close()
        load_after = os.getloadavg()
    report(rows, args, text_len, load_before, load_after, cpu_capabilities(), console, skipped)


def report(rows: list[dict], args, text_len: int, load_before, load_after, caps: list[str], console: Console,
           skipped: dict[str, str]) -> None:
    versions = package_versions(("onnxruntime", "openvino", "torch"))
    title = (f"ViT-B/32 ({'smoke' if args.smoke else 'CLIPConfig defaults'}, random weights), {args.threads} threads, "
             f"text {text_len} tokens, {args.rounds} rounds of {args.block} calls per runner; "
             + ", ".join(f"{k} {v}" for k, v in versions.items()))
    table = Table(title=title)
    head = ("tower", "batch", "runtime, graph", "median ms", "vs ORT fp32", "min cosine vs ORT fp32", "precision")
    for col in head:
        table.add_column(col, justify="left" if col in ("tower", "runtime, graph", "precision") else "right")
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["tower"], str(r["batch"]), r["runtime"], f"{r['median_ms']:.1f}", f"{r['vs_ort_fp32']:.2f}x",
                 f"{r['min_cosine']:.5f}", r["precision"]]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    load = (f"load average (1, 5, 15 min) before timing: {' '.join(f'{x:.2f}' for x in load_before)}; after: "
            f"{' '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} CPUs")
    cpu = f"CPU: {cpu_description()}; OpenVINO CPU capabilities: {', '.join(caps)}"
    console.print(table)
    console.print(load, highlight=False)
    console.print(cpu, highlight=False)
    lines = targets(rows) + [f"not run: {name}: {why}" for name, why in skipped.items()]
    for line in lines:
        console.print(line, highlight=False)
    if args.out is None and args.smoke:
        return
    out = args.out or Path(__file__).parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bf16_cpu.json").write_text(json.dumps({"rows": rows, "load_before": load_before,
                                                   "load_after": load_after, "cpu": cpu_description(),
                                                   "openvino_capabilities": caps, "versions": versions,
                                                   "settings": {**vars(args), "out": str(out)}}, indent=2))
    (out / "bf16_cpu.md").write_text("\n".join([title, "", *md, "", f"- {load}", f"- {cpu}",
                                                *(f"- {line}" for line in lines)]) + "\n")


def targets(rows: list[dict]) -> list[str]:
    """Issue 29's bars, each against what this run measured."""
    out = []
    by = {(r["tower"], r["batch"], r["runtime"]): r for r in rows}
    for tower, batch in dict.fromkeys((r["tower"], r["batch"]) for r in rows):
        cell = {name: by[tower, batch, name] for (t, b, name) in by if (t, b) == (tower, batch)}
        bf16 = ", ".join(f"{n} {cell[n]['vs_ort_fp32']:.2f}x (min cosine {cell[n]['min_cosine']:.5f})"
                         for n in ("OpenVINO bf16", "torch bf16", "torch bf16 compiled") if n in cell)
        same = "ORT int8 static" if "ORT int8 static" in cell else "ORT int8"  # the graph OpenVINO int8 runs
        int8 = cell[same]["median_ms"] / cell["OpenVINO int8"]["median_ms"]
        vs_auto = cell["ORT int8"]["median_ms"] / cell["OpenVINO int8"]["median_ms"]
        best = max((n for n in cell if n.startswith("MoPE 0.5") and "int8" in n), key=lambda n: cell[n]["vs_ort_fp32"])
        out.append(f"{tower} batch {batch}: {bf16} over ORT fp32 (target >= 1.7x, cosine >= 0.9995); OpenVINO int8 "
                   f"/ {same} (the same graph) = {int8:.2f}x (target >= 1x), / ORT int8 (--scheme auto) = "
                   f"{vs_auto:.2f}x; MoPE 0.5 + int8, best = {best} at {cell[best]['vs_ort_fp32']:.2f}x dense "
                   f"ORT fp32 (target >= 6x)")
    return out


if __name__ == "__main__":
    main()
