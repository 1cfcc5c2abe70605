"""ONNX Runtime CPU vs PyTorch eager on the CLIP ViT-B/32 architecture, with achieved GFLOP/s vs the machine's peak.

    python benchmarks/serve_vitb32.py [--batch 8] [--text-len 77] [--rounds 4] [--block 3] [--threads N] [--fusions]

Builds `CLIPModel(CLIPConfig())` (the ViT-B/32 shapes: 224x224 images, patch
32, width 768/512, 12+12 layers, 77 text positions; random weights, ~151M
parameters: no download), exports both towers with `mfdeploy.exporting` into a
temporary directory and, in one run:

1. measures the machine's fp32 matmul peak: the best rate of ten 1024x1024
   and ten 2048x2048 matmuls (2*n^3 FLOPs each), in torch and in ONNX
   Runtime, before and after the timed calls (the rate of a shared host
   drifts);
2. times each tower at one batch size with PyTorch eager and ONNX Runtime
   (CPU EP, graph optimisation ALL, intra-op threads = physical cores,
   thread spinning on as ONNX Runtime serves by default) in alternating
   blocks (`time_blocks`: a few back-to-back calls of one backend, then of
   the other, the first 50 ms of each block untimed), so each runs as a
   serving process does while drift on this shared host hits both alike;
3. prints per backend and tower: median latency, items/s, achieved GFLOP/s,
   its fraction of the matmul peak, and the ORT/torch throughput ratio;
4. times the vision tower's linear layers alone at the tower's own shapes
   (torch `F.linear` vs an ONNX Runtime MatMul + Add, same blocks) and
   sums them per tower: the ORT/torch ratio on the GEMMs that are 96% of
   the tower's FLOPs, which is what the tower's ratio rests on.

Why blocks and not call-by-call interleaving (what `mfdeploy bench` does
for dense vs pruned on one backend): two libraries taking turns disturb
each other. On this machine a 400x768x768 linear layer ran at 144 GFLOP/s
in ONNX Runtime back to back and at 85 GFLOP/s when each call followed a
torch call (torch: 135 vs 128). The likely causes, not isolated further:
each call wakes cold worker threads, and the layer's weights have left the
cache.

FLOPs are counted analytically (multiply-add = 2 FLOPs; LayerNorm, softmax,
GELU, biases and embeddings are left out, under 1% here), per item, for a
transformer of width W, MLP width M, depth N_l, T tokens:

    per layer  = 2*T*(4*W*W + 2*W*M)     q, k, v, out projections; fc1, fc2
               + 2*2*T*T*W               Q K^T and A V over all heads
    vision     = 2*(T-1)*(3*P*P)*W       patch embedding (a conv = a matmul), T = (S/P)^2 + 1
               + N_l * per layer + 2*W*D projection of the CLS token to D
    text       = N_l * per layer + 2*W*D projection of the EOS token, T = text length

ViT-B/32: vision 8.82 GFLOP per image (4.4 GMAC, the figure usually quoted);
text at 77 tokens 5.96 GFLOP per text.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, vitb32  # noqa: E402

from mfdeploy.bench.timing import time_blocks  # noqa: E402
from mfdeploy.platform import physical_cores
from mfdeploy.runtime.inputs import pixel_values, text_inputs

console = Console()


def layer_flops(tokens: int, width: int, mlp: int) -> float:
    """FLOPs of one transformer layer on `tokens` tokens: linear layers plus attention matmuls."""
    linear = 2 * tokens * (4 * width * width + 2 * width * mlp)
    attention = 2 * 2 * tokens * tokens * width
    return float(linear + attention)


def vision_flops(cfg, proj_dim: int) -> float:
    """FLOPs per image of the vision tower (see the module docstring)."""
    patches = (cfg.image_size // cfg.patch_size) ** 2
    tokens = patches + 1  # + CLS
    patch_embed = 2 * patches * (3 * cfg.patch_size**2) * cfg.hidden_size
    body = cfg.num_hidden_layers * layer_flops(tokens, cfg.hidden_size, cfg.intermediate_size)
    return float(patch_embed + body + 2 * cfg.hidden_size * proj_dim)


def text_flops(cfg, proj_dim: int, text_len: int) -> float:
    """FLOPs per text of `text_len` tokens of the text tower (see the module docstring)."""
    body = cfg.num_hidden_layers * layer_flops(text_len, cfg.hidden_size, cfg.intermediate_size)
    return float(body + 2 * cfg.hidden_size * proj_dim)


def _ort_session(nodes, inputs, outputs, initializers=(), threads: int | None = None):
    """An ONNX Runtime CPU session over a one-off graph."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def io(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))

    graph = helper.make_graph(nodes, "g", [io(*i) for i in inputs], [io(*o) for o in outputs], list(initializers))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(helper.make_model(graph).SerializeToString(), opts, providers=["CPUExecutionProvider"])


def matmul_peak(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on this machine: torch.mm and an ONNX Runtime MatMul.

    Each library gets `repeats` timed calls after a warm-up; the better rate
    of the two is the peak (on this machine ONNX Runtime's GEMM is the faster
    one, so a torch-only peak understates what the hardware does).
    """
    from onnx import helper

    a, b = torch.randn(n, n), torch.randn(n, n)
    sess = _ort_session([helper.make_node("MatMul", ["a", "b"], ["c"])], [("a", (n, n)), ("b", (n, n))],
                        [("c", (n, n))], threads=threads)
    feeds = {"a": a.numpy(), "b": b.numpy()}
    best = float("inf")
    for fn in (lambda: torch.mm(a, b), lambda: sess.run(None, feeds)):
        fn()  # warm-up: thread pool, page faults
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def linear_shapes(cfg, batch: int) -> list[tuple[str, int, int, int, int]]:
    """The vision tower's linear layers at `batch`: (name, rows, in, out, how many in the tower)."""
    rows = batch * ((cfg.image_size // cfg.patch_size) ** 2 + 1)
    w, m, n_l = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return [("q/k/v/out proj", rows, w, w, 4 * n_l), ("fc1", rows, w, m, n_l), ("fc2", rows, m, w, n_l)]


def linear_rates(shapes, threads: int, rounds: int, block: int) -> list[dict]:
    """Median time of each linear layer (y = x W^T + b) alone, torch `F.linear` vs ONNX Runtime MatMul + Add.

    The same weights, timed in alternating blocks. It isolates what each library's GEMM
    does at the model's own shapes: when both backends spend their time in
    these layers, the tower's ORT/torch ratio cannot stray far from theirs.
    """
    from onnx import helper, numpy_helper

    g = torch.Generator().manual_seed(0)
    out = []
    for name, m, k, n, count in shapes:
        x, weight, bias = (torch.randn(*s, generator=g) for s in ((m, k), (n, k), (n,)))
        nodes = [helper.make_node("MatMul", ["x", "wt"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
        sess = _ort_session(nodes, [("x", (m, k))], [("y", (m, n))],
                            [numpy_helper.from_array(weight.T.contiguous().numpy(), "wt"),
                             numpy_helper.from_array(bias.numpy(), "b")], threads=threads)
        feed = {"x": x.numpy()}

        def run_torch(x=x, weight=weight, bias=bias):
            with torch.inference_mode():
                return torch.nn.functional.linear(x, weight, bias)

        got = sess.run(None, feed)[0]
        assert np.allclose(got, run_torch().numpy(), rtol=1e-3, atol=1e-3), f"{name}: ORT and torch disagree"
        lat = time_blocks({"torch": run_torch, "ort": lambda s=sess, f=feed: s.run(None, f)}, rounds, block)
        out.append({"name": name, "shape": (m, k, n), "count": count, "gflop": 2 * m * k * n / 1e9,
                    **{b: float(np.median(v)) for b, v in lat.items()}})
    return out


def build_model(smoke: bool = False):
    """ViT-B/32-shaped CLIP with random weights as an mfdeploy adapter, and its config (`smoke`: a tiny one)."""
    model = vitb32(smoke=smoke)
    return WrappedAdapter(model), model.config


def export(adapter, out: Path) -> str:
    """Both towers with mfdeploy.exporting (the project's exporter); returns how."""
    from mfdeploy.exporting import export_towers

    export_towers(adapter, out)
    return "mfdeploy.exporting.export_towers (TorchScript exporter, opset 17, onnxscript-optimised)"


def export_fused(adapter, config, out: Path) -> dict[str, dict[str, int]]:
    """Both towers through ONNX Runtime's transformer optimizer (model type "clip"); returns the fused-op counts.

    Exported from eager attention, the pattern the optimizer's attention
    fusion recognises (from SDPA it fuses LayerNorm and QuickGelu only). The
    result holds com.microsoft ops (Attention, SkipLayerNormalization,
    QuickGelu): ONNX Runtime only, which is why the toolkit's export stays
    standard ONNX and this is a benchmark option.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    model = adapter.model
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        export(adapter, out)
    finally:
        model.set_attn_implementation(before)
    counts = {}
    for tower, cfg in (("vision", config.vision_config), ("text", config.text_config)):
        fused = optimize_model(str(out / f"{tower}.onnx"), model_type="clip", num_heads=cfg.num_attention_heads,
                               hidden_size=cfg.hidden_size, opt_level=1)
        fused.save_model_to_file(str(out / f"{tower}.onnx"))
        counts[tower] = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=77, help="tokens per text (77: CLIP's full context)")
    parser.add_argument("--rounds", type=int, default=4, help="blocks per backend and tower")
    parser.add_argument("--block", type=int, default=3, help="timed back-to-back calls per block")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--fusions", action="store_true",
                        help="also time ONNX Runtime on towers fused by its transformer optimizer")
    parser.add_argument("--smoke", action="store_true", help="a tiny model of the same layout: checks the script")
    args = parser.parse_args(argv)

    from mfdeploy.runtime.ort_runner import OrtRunner
    from mfdeploy.runtime.torch_runner import TorchRunner

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    console.print(f"machine: {os.cpu_count()} logical CPUs, {physical_cores()} physical cores; threads {threads}; "
                  f"load average {load:.2f}; torch {torch.__version__}", highlight=False)
    if load > physical_cores() * 0.75:
        console.print(f"[yellow]note[/]: the load average ({load:.1f}) shows other work on this machine; "
                      "absolute numbers are lower than on an idle one (the ratios, timed in alternating blocks, "
                      "hold up better)")

    t0 = time.perf_counter()
    # This machine's matmul rate varies by +-15% from minute to minute (a shared host): the peak is the
    # best rate seen, at two sizes, before and after the timed calls.
    peaks = [matmul_peak(n, 10, threads) for n in (1024, 2048)]
    console.print(f"fp32 matmul rate before timing (1024/2048, best of torch.mm and ORT MatMul, 10 calls each): "
                  f"{peaks[0]:.1f} / {peaks[1]:.1f} GFLOP/s")

    adapter, config = build_model(args.smoke)
    n_params = sum(p.numel() for p in adapter.model.parameters())
    name = "a 2-layer smoke-test model" if args.smoke else "CLIP ViT-B/32 architecture"
    console.print(f"model: {name}, random weights, {n_params / 1e6:.1f}M parameters")
    flops = {"vision": vision_flops(config.vision_config, config.projection_dim),
             "text": text_flops(config.text_config, config.projection_dim, args.text_len)}

    b = args.batch
    images = pixel_values(b, config.vision_config.image_size)
    tc = config.text_config
    ids, mask = text_inputs(b, args.text_len, bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id)

    with tempfile.TemporaryDirectory(prefix="mfdeploy-vitb32-") as tmp:
        how = export(adapter, Path(tmp))
        console.print(f"exported with {how} in {time.perf_counter() - t0:.0f} s since start")
        runners = {"torch eager": TorchRunner(adapter, threads=threads),
                   "onnxruntime cpu": OrtRunner(tmp, provider="cpu", threads=threads)}
        if args.fusions:
            fused_dir = Path(tmp) / "fused"
            counts = export_fused(adapter, config, fused_dir)
            console.print(f"ONNX Runtime transformer optimizer (clip) fused: {counts}", highlight=False)
            runners["onnxruntime cpu, fused"] = OrtRunner(fused_dir, provider="cpu", threads=threads)
        calls = {
            "vision": {k: (lambda r=r: r.embed_images(images)) for k, r in runners.items()},
            "text": {k: (lambda r=r: r.embed_texts(ids, mask)) for k, r in runners.items()},
        }
        # parity first: the ONNX graph must compute what torch computes
        parity: dict[str, dict[str, float]] = {}
        for tower, fns in calls.items():
            a = fns["torch eager"]()
            parity[tower] = {}
            for k, fn in fns.items():
                o = fn()
                cos = (a * o).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(o, axis=-1))
                parity[tower][k] = float(cos.min())
        results = {}
        for tower, fns in calls.items():
            lat = time_blocks(fns, rounds=args.rounds, block=args.block)
            results[tower] = {k: float(np.median(v)) for k, v in lat.items()}
            console.print(f"timed {tower}: {args.rounds} alternating blocks of {args.block} calls per backend",
                          style="dim")
    # blocks of 30 calls: a layer takes 3-20 ms, and shorter blocks of it measured 2x too slow on this host
    gemms = linear_rates(linear_shapes(config.vision_config, b), threads, rounds=3, block=30)
    console.print("timed the vision tower's linear layers alone, torch and ORT in alternating blocks", style="dim")
    after = [matmul_peak(n, 10, threads) for n in (1024, 2048)]
    console.print(f"fp32 matmul rate after timing: {after[0]:.1f} / {after[1]:.1f} GFLOP/s")
    peak = max(peaks + after)

    table = Table(title=f"{'smoke model' if args.smoke else 'ViT-B/32'}, batch {b}, fp32 CPU, {threads} threads "
                        f"(text {args.text_len} tokens; matmul peak {peak:.1f} GFLOP/s)")
    for col in ("tower", "backend", "median ms", "items/s", "GFLOP/item", "GFLOP/s", "of peak", "ORT/torch",
                "min cosine"):
        table.add_column(col, justify="left" if col in ("tower", "backend") else "right")
    for tower, med in results.items():
        for backend, seconds in med.items():
            gflops = flops[tower] * b / seconds / 1e9
            ort = backend != "torch eager"
            table.add_row(tower, backend, f"{seconds * 1e3:.1f}", f"{b / seconds:.1f}", f"{flops[tower] / 1e9:.2f}",
                          f"{gflops:.1f}", f"{gflops / peak:.0%}",
                          f"{med['torch eager'] / seconds:.2f}x" if ort else "",
                          f"{parity[tower][backend]:.6f}" if ort else "")
    console.print(table)

    # Where the vision tower's time goes: its linear layers, timed alone at the tower's shapes.
    gemm_table = Table(title=f"ViT vision tower linear layers alone (y = x W^T + b, batch {b}): "
                             "torch F.linear vs ORT MatMul+Add, alternating blocks")
    for col in ("layer", "M x K x N", "per tower", "torch GFLOP/s", "ORT GFLOP/s", "ORT/torch"):
        gemm_table.add_column(col, justify="left" if col == "layer" else "right")
    for r in gemms:
        gemm_table.add_row(r["name"], "x".join(map(str, r["shape"])), str(r["count"]), f"{r['gflop'] / r['torch']:.1f}",
                           f"{r['gflop'] / r['ort']:.1f}", f"{r['torch'] / r['ort']:.2f}x")
    console.print(gemm_table)
    linear = {k: sum(r["count"] * r[k] for r in gemms) for k in ("torch", "ort")}
    tower = {"torch": results["vision"]["torch eager"], "ort": results["vision"]["onnxruntime cpu"]}
    share = sum(r["count"] * r["gflop"] for r in gemms) / (flops["vision"] * b / 1e9)
    # times from different minutes of a drifting host do not add up; ratios within one phase do
    console.print(f"the linear layers are {share:.0%} of the vision tower's FLOPs; on them alone (summed median "
                  f"times) ORT/torch = {linear['torch'] / linear['ort']:.2f}x", highlight=False)
    console.print(f"total {time.perf_counter() - t0:.0f} s", style="dim")
    ok = tower["torch"] / tower["ort"]
    verdict = "meets" if ok >= 1.3 else "does NOT meet"
    console.print(f"vision ORT/torch = {ok:.3f}x: {verdict} the 1.3x expected on a 2-core CPU", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
