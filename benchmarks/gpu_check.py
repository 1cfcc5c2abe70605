"""One command that checks and measures the GPU paths on one CUDA GPU (issue 18), printing as it goes.

    python benchmarks/gpu_check.py [--out benchmarks/results] [--iters 20] [--budget-s 360] [--cpu-dry-run]

1. `mfdeploy build --ratio 0.5 --pattern 2:4 --fp16 --device cuda` on the bundled model, and the same
   masks made on the CPU (`mfdeploy prune --device cpu`): their agreement (bar: >= 99.9% of weights).
2. ViT-B/32 (`CLIPConfig()` defaults, random weights, built here): MULTIFLOW 2:4 pruning on CUDA (time, peak
   GPU memory); then each tower in fp16, dense vs 2:4 semi-structured (`to_sparse_semi_structured`) vs
   MoPE 0.5, at batch 1, 32 and 256 (images/s, texts/s at 77 tokens, CUDA events around synchronised calls),
   with each variant's min cosine against the same weights in fp32 on the same inputs (bar: >= 0.999).
3. The other GPU backends this machine has (`mfdeploy.runtime.probe_backends`: ONNX Runtime CUDA/TensorRT
   EPs, TensorRT engines), each available or skipped with the reason.
4. `mfdeploy bench` on the bundled build: torch, torch-cuda, torch-cuda-sparse.
5. ViT-B/32 through the `torch-cuda` runner as `serve` makes it (issue 30): eager, CUDA graphs per batch
   bucket, torch.compile + graphs, FP8 + graphs, 2:4 (magnitude) with the per-layer sparse choice (fp16, FP8) + graphs;
   vision and text (77 tokens) at batch 1, 32 and 256: ms, items/s, TFLOP/s (2 FLOP per multiply-add of the
   GEMMs and attention) and % of the GPU's dense fp16 peak, min cosine against the eager runner.
6. `benchmarks/serve_load.py --skip-bundled --vitb32-backends torch-cuda`: `mfdeploy serve` on the GPU,
   ViT-B/32 images at 1-64 clients, dynamic batching against `--max-batch 1` at 16 clients.
7. Step 5 again for ViT-L/14 (its 24 vision layers at 1024 wide have the largest GEMMs), while time is left.
Writes gpu_check.json and gpu_check.md (GPU, driver, torch and CUDA versions in the header) after every step.

Budget: under 8 minutes of wall time on one GPU: no step or runner variant starts after `--budget-s` (360 s;
a skipped one is named in the report); steps 1-4 took 99 s on an H200 (docs/results/gpu.md).
`--cpu-dry-run` runs the flow on the CPU with a 2-layer model and no sparse kernels (a check of the script
itself; its numbers mean nothing). Without CUDA (and without `--cpu-dry-run`) it exits at once, in one line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from vitb32 import WrappedAdapter, random_batches, vitb32  # noqa: E402

from mfdeploy.bench.stability import load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()


def why(e: BaseException) -> str:
    """What a report says of a failure: the exception's type and first line."""
    from mfdeploy.errors import first_line

    return f"{type(e).__name__}: {first_line(e)}"


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def cli(*args: str) -> None:
    """`mfdeploy ARGS` from this checkout (the caller's PYTHONPATH kept after it: packages carried there)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    subprocess.run([sys.executable, "-m", "mfdeploy.cli", *args], check=True, env={**os.environ, "PYTHONPATH": path})


def pooled(out) -> torch.Tensor:
    return getattr(out, "pooler_output", out)  # transformers 5 returns a model output


def tower_call(model, tower: str, px: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """A no-argument call of one tower of `model` on fixed inputs (the thing timed)."""
    if tower == "vision":
        return lambda: pooled(model.get_image_features(pixel_values=px))
    return lambda: pooled(model.get_text_features(input_ids=ids, attention_mask=mask))


def masks_agreement(a: Path, b: Path) -> float:
    from mfdeploy.pruning.masks import load_masks

    (ma, _), (mb, _) = load_masks(a), load_masks(b)
    same = sum(int((ma[n] == mb[n]).sum()) for n in ma)
    return same / sum(m.numel() for m in ma.values())


def step1(tmp: Path, device: str) -> dict:
    say("1. bundled model: build on the GPU (2:4, fp16), prune on the CPU, compare masks")
    t = time.perf_counter()
    cli("build", "--ratio", "0.5", "--pattern", "2:4", "--fp16", "--device", device, "--out", str(tmp / "build"))
    build_s = time.perf_counter() - t
    cli("prune", "--ratio", "0.5", "--pattern", "2:4", "--device", "cpu", "--out", str(tmp / "cpu"))
    agree = masks_agreement(tmp / "build" / "masks.safetensors", tmp / "cpu" / "masks.safetensors")
    engine = json.loads((tmp / "build" / "build.json").read_text()).get("engine") or {}
    say(f"   build {build_s:.1f} s; masks agree on {100 * agree:.4f}% of weights (bar >= 99.9%); "
        f"engines: {engine.get('status')}")
    return {"build_s": build_s, "masks_agreement": agree, "passed": agree >= 0.999, "engine": engine.get("status")}


def timed(fn, iters: int, cuda: bool) -> float:
    """Median seconds per call (CUDA events around each call on a GPU), after 3 untimed calls."""
    from mfdeploy.runtime.base import wall_seconds
    from mfdeploy.runtime.torch_cuda import cuda_event_seconds

    for _ in range(3):
        fn()
    clock = cuda_event_seconds if cuda else wall_seconds
    return sorted(clock(fn) for _ in range(iters))[iters // 2]


def graphed(fn):
    """`fn` captured once in a CUDA graph (its inputs fixed): a replay runs its kernels without the host's
    per-call work (Python, dispatch, cuSPARSELt's plan set-up), which bounds what a graph-replaying server gets."""
    torch.cuda.set_sync_debug_mode("error")  # a call that waits on the GPU cannot be captured: find out first,
    try:  # without a failed capture (which can leave the CUDA context unusable)
        fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def tower_row(model, reference, tower: str, batch: int, px, ids, mask, half, iters: int, cuda: bool) -> dict:
    """One tower of one variant at one batch: eager and CUDA-graph speed, and min cosine against fp32."""
    call = tower_call(model, tower, px.to(half), ids, mask)
    ref = torch.nn.functional.normalize(tower_call(reference, tower, px, ids, mask)().float(), dim=-1)
    emb = torch.nn.functional.normalize(call().float(), dim=-1)
    sec = timed(call, iters, cuda)
    row = {"items_per_s": batch / sec, "ms": 1000 * sec, "min_cosine_vs_fp32": float((emb * ref).sum(-1).min())}
    if cuda:
        try:
            graph_sec = timed(graphed(call), iters, cuda)
            row.update(graph_items_per_s=batch / graph_sec, graph_ms=1000 * graph_sec)
        except Exception as e:  # noqa: BLE001 - capture can fail (a host sync in the model): said in the row
            row["graph_error"] = why(e)
    return row


def step2(device: str, iters: int, dry: bool) -> dict:
    from mfdeploy.models.inputs import CalibSource
    from mfdeploy.pruning import PruneConfig, prune_model
    from mfdeploy.runtime.torch_cuda import sparsify_linears

    say("2. ViT-B/32: MULTIFLOW 2:4 and MoPE 0.5 on the GPU, fp16 towers dense / 2:4 / MoPE")
    cuda = device.startswith("cuda")
    dense = vitb32(smoke=dry)
    calib = tuple(random_batches(dense, 32, 32))
    out: dict = {"prune": {}, "towers": []}
    variants = {}
    for name, cfg in (("2:4", PruneConfig(ratio=0.5, method="multiflow", pattern="2:4", batch_size=32,
                                          calib_samples=32, show_progress=False)),
                      ("MoPE 0.5", PruneConfig(ratio=0.5, method="mope", mope_neuron_group=32 if dry else 256,
                                               batch_size=32, calib_samples=32, show_progress=False))):
        adapter = WrappedAdapter(copy.deepcopy(dense).to(device))
        batches = tuple(type(b)(*(x.to(device) for x in (b.pixel_values, b.input_ids, b.attention_mask)))
                        for b in calib)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        prune_model(adapter, cfg, source=CalibSource("memory", batches=batches))
        seconds = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        out["prune"][name] = {"seconds": seconds, "peak_gpu_gb": peak}
        say(f"   prune {name}: {seconds:.1f} s" + (f", peak GPU memory {peak:.2f} GB" if peak else ""))
        variants[name] = adapter.model
    half = torch.float16 if cuda else torch.float32
    torch.backends.cudnn.allow_tf32 = False  # the fp32 references in true fp32 (cuDNN's convolutions default to TF32)
    torch.backends.cuda.matmul.allow_tf32 = False
    # each fp16 variant is compared with the same weights in fp32: what the GPU path changes, not what pruning did
    references = {"dense": dense.to(device).float().eval(), "2:4 semi-structured": variants["2:4"].float().eval(),
                  "MoPE 0.5": variants["MoPE 0.5"].float().eval()}
    references["2:4 CUTLASS"] = references["2:4 semi-structured"]
    models = {name: copy.deepcopy(ref).to(device, half).eval() for name, ref in references.items()}
    out["sparse_layers"], out["dense_layers"] = {}, {}
    for name, kernels in (("2:4 semi-structured", "default"), ("2:4 CUTLASS", "cutlass")):
        sparse, refused = sparsify_linears(models[name], kernels) if cuda else ([], {"all": "CPU dry run"})
        out["sparse_layers"][name], out["dense_layers"][name] = len(sparse), refused
        say(f"   {name}: {len(sparse)} linears sparse, {len(refused)} refused")
    if cuda:
        warm_gpu()
    vc = dense.config.vision_config
    inputs = {}
    for batch in (1, 32, 256) if not dry else (1, 4):
        b = random_batches(dense, batch, batch, text_len=77 if not dry else 16)[0]
        inputs[batch] = (torch.randn(batch, 3, vc.image_size, vc.image_size, device=device),
                         b.input_ids.to(device), b.attention_mask.to(device))
    timed_models = {name: model for name, model in models.items()  # a variant with no sparse layer is dense
                    if name not in out["sparse_layers"] or out["sparse_layers"][name]}
    for tower in ("vision", "text"):  # the text tower last: its CUDA-graph capture is the likelier to fail
        for batch, (px, ids, mask) in inputs.items():
            with torch.inference_mode():
                for name, model in timed_models.items():
                    row = {"model": name, "tower": tower, "batch": batch}
                    out["towers"].append(row)
                    try:
                        row.update(tower_row(model, references[name], tower, batch, px, ids, mask, half, iters, cuda))
                    except Exception as e:  # noqa: BLE001 - one variant failing leaves the others' rows
                        row["error"] = why(e)
                    say(f"   {name:20s} {tower:6s} batch {batch:3d}: " + (
                        row["error"] if "error" in row else
                        f"{row['items_per_s']:9.1f} items/s eager, "
                        + (f"{row['graph_items_per_s']:9.1f} in a CUDA graph, " if "graph_items_per_s" in row
                           else f"CUDA graph: {row.get('graph_error', 'n/a')}, ")
                        + f"min cosine vs fp32 {row['min_cosine_vs_fp32']:.5f}"
                        + ("" if row["min_cosine_vs_fp32"] >= 0.999 else " (below 0.999)")))
    return out


# dense fp16 tensor-core peaks, TFLOP/s (NVIDIA's datasheets, SXM parts, without sparsity)
RUNNER_MODELS = {"b32": "ViT-B/32", "l14": "ViT-L/14"}
BUDGET = {"s": 360.0}  # seconds of the whole check after which no further step or runner variant starts


def over_budget() -> bool:
    return time.perf_counter() - T0 > BUDGET["s"]


FP16_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def tower_flops(cfg, tokens: int, image_patch: int | None = None, projection: int = 0) -> float:
    """FLOPs of one item through a tower: 2 per multiply-add of its GEMMs and attention (issue 30's count)."""
    d, inner, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_layer = 2 * tokens * (4 * d * d + 2 * d * inner) + 2 * 2 * tokens * tokens * d
    patch = 2 * (tokens - 1) * 3 * image_patch ** 2 * d if image_patch else 0
    return layers * per_layer + patch + 2 * d * projection


def runner_model(size: str, dry: bool):
    """The random-weight CLIP whose towers `step_runners` times: "b32" (ViT-B/32) or "l14" (ViT-L/14)."""
    from scale import config
    from transformers import CLIPModel

    if size == "b32":
        return vitb32(smoke=dry)
    torch.manual_seed(0)
    return CLIPModel(config(size, dry)).eval()


def step_runners(device: str, iters: int, dry: bool, size: str = "b32", rows: list[dict] | None = None,
                 saved=lambda: None) -> list[dict]:
    """The torch-cuda runner as `serve` and `bench` make it (issue 30): eager, CUDA graphs, torch.compile +
    graphs, FP8 + graphs, and 2:4 with the per-layer choice in fp16 and FP8 (magnitude 2:4), at batch 1, 32 and
    256, each with its min cosine against the eager fp16 runner, items/s and TFLOP/s. A variant that would start
    after the check's time budget is a row saying so. Rows go into `rows` as they come, and `saved()` is called
    after each variant (the report is rewritten: a run cut short keeps the variants that finished)."""
    from mfdeploy.runtime.torch_cuda import TorchCudaRunner
    from mfdeploy.runtime.torch_runner import TorchRunner

    title = RUNNER_MODELS[size]
    say(f"5. {title} through the torch-cuda runner: eager, graphs, compile + graphs, fp8 + graphs, 2:4 chosen "
        "(fp16, fp8)")
    cuda = device.startswith("cuda")
    model = runner_model(size, dry)
    adapter = WrappedAdapter(model)
    pruned = WrappedAdapter(copy.deepcopy(model))
    with torch.no_grad():  # magnitude 2:4 on every encoder linear: no calibration, the pattern is what matters
        for name, mod in pruned.model.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".encoder." in name:
                w = mod.weight.view(mod.weight.shape[0], -1, 4)
                drop = w.abs().argsort(dim=-1)[..., :2]
                w.scatter_(-1, drop, 0.0)
    batches = (1, 4) if dry else (1, 32, 256)
    largest = max(batches)
    vc, tc = model.config.vision_config, model.config.text_config
    text_len = 16 if dry else 77
    flops = {"vision": tower_flops(vc, (vc.image_size // vc.patch_size) ** 2 + 1, vc.patch_size,
                                   model.config.projection_dim),
             "text": tower_flops(tc, text_len, None, model.config.projection_dim)}
    peak = next((v for k, v in FP16_PEAKS.items() if k in (torch.cuda.get_device_name(0) if cuda else "")), None)
    makers = {"eager": lambda: TorchCudaRunner(adapter, cuda_graphs=False),
              "graphs": lambda: TorchCudaRunner(adapter, max_batch=largest, max_text_len=text_len),
              "compile + graphs": lambda: TorchCudaRunner(adapter, compile=True, max_batch=largest,
                                                         max_text_len=text_len),
              "fp8 + graphs": lambda: TorchCudaRunner(adapter, fp8=True, max_batch=largest, max_text_len=text_len),
              "2:4 chosen + graphs": lambda: TorchCudaRunner(pruned, sparse=True, max_batch=largest,
                                                            max_text_len=text_len),
              "fp8 2:4 chosen + graphs": lambda: TorchCudaRunner(pruned, sparse=True, fp8=True, max_batch=largest,
                                                                max_text_len=text_len)}
    if not cuda:  # the dry run: the CPU runner, eager and compiled, checks the flow
        makers = {"eager": lambda: TorchRunner(adapter), "compile": lambda: TorchRunner(adapter, compile=True)}
    inputs = {}
    for batch in batches:
        b = random_batches(model, batch, batch, text_len=text_len)[0]
        inputs[batch] = (torch.randn(batch, 3, vc.image_size, vc.image_size).numpy(), b.input_ids.numpy(),
                         b.attention_mask.numpy())
    rows = [] if rows is None else rows
    reference: dict = {}
    for name, make in makers.items():
        if over_budget():
            rows.append({"runner": name, "model": title, "error": f"skipped: the check's {BUDGET['s']:.0f} s "
                                                                   "budget was spent before it started"})
            say(f"   {name}: {rows[-1]['error']}")
            continue
        try:
            t = time.perf_counter()
            runner = make()
            start_s = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - a variant that cannot run here is a row saying why
            rows.append({"runner": name, "model": title, "error": why(e)})
            say(f"   {name}: {why(e)}")
            saved()
            continue
        notes = {k: getattr(runner, k) for k in ("graphs", "compiled_with", "precision") if getattr(runner, k, None)}
        if getattr(runner, "sparse_choice", None):
            from mfdeploy.runtime.sparse_choice import summary

            notes["sparse_linears"] = summary(runner.sparse_choice)
        say(f"   {name}: ready in {start_s:.1f} s {notes}")
        for tower in ("vision", "text"):
            for batch, (px, ids, mask) in inputs.items():
                call = (lambda r=runner, x=px: r.embed_images(x)) if tower == "vision" else \
                    (lambda r=runner, i=ids, m=mask: r.embed_texts(i, m))
                emb = call()
                reference.setdefault((tower, batch), emb)  # the eager runner's, made first
                ref = reference[(tower, batch)]
                sec = timed(call, iters, cuda)
                tflops = flops[tower] * batch / sec / 1e12
                row = {"runner": name, "model": title, "tower": tower, "batch": batch, "ms": 1000 * sec,
                       "items_per_s": batch / sec,
                       "tflops": tflops, "pct_of_fp16_peak": 100 * tflops / peak if peak else None,
                       "min_cosine_vs_eager": float((emb * ref).sum(-1).min()),  # both L2-normalised
                       "start_s": start_s, **notes}
                rows.append(row)
                say(f"   {title} {name:20s} {tower:6s} batch {batch:3d}: {row['ms']:8.2f} ms, "
                    f"{row['items_per_s']:9.1f} items/s, {tflops:7.1f} TFLOP/s, "
                    f"min cosine vs eager {row['min_cosine_vs_eager']:.5f}")
        runner.close()
        saved()
        if cuda:
            torch.cuda.empty_cache()
    return rows


def warm_gpu(seconds: float = 2.0) -> None:
    """Bring the GPU's clocks up from idle before timing (an idle H100/H200 sits at a few hundred MHz)."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


KERNEL_SHAPES = (  # (in, out, tokens of 1, 32 and 256 images): the MLP linears of ViT-B/32 and ViT-L/14
    (768, 3072, (50, 1600, 12800)), (3072, 768, (50, 1600, 12800)),
    (1024, 4096, (257, 8224, 65792)), (4096, 1024, (257, 8224, 65792)))


def step_kernels(iters: int) -> list[dict]:
    """One linear of ViT-B/32's and ViT-L/14's MLP shapes, all on the same 2:4 weights: fp16 dense, fp16 2:4 on
    cuSPARSELt and on CUTLASS, FP8 dense (`Fp8Linear`) and FP8 2:4 on cuSPARSELt (`Fp8SparseLinear`), CUDA events,
    eager and in a CUDA graph. A form the GPU or torch refuses is left out, with the reason printed."""
    from torch import nn

    from mfdeploy.pruning.patterns import mask_nm
    from mfdeploy.runtime.fp8 import Fp8Linear, Fp8SparseLinear
    from mfdeploy.runtime.torch_cuda import sparsify_linears

    say("2b. one linear, ViT-B/32 and ViT-L/14 MLP shapes: fp16 dense / 2:4 cuSPARSELt / 2:4 CUTLASS, fp8 dense / 2:4")
    warm_gpu()
    rows = []
    torch.manual_seed(0)
    for d_in, d_out, token_counts in KERNEL_SHAPES:
        layer = nn.Linear(d_in, d_out).cuda().half()
        with torch.no_grad():
            layer.weight.mul_(mask_nm(layer.weight.float().abs(), 2, 4).to(layer.weight.dtype))
        layers = {"dense": layer}
        for kernels in ("cusparselt", "cutlass"):
            layers[kernels] = copy.deepcopy(layer)
            _, refused = sparsify_linears(nn.Sequential(layers[kernels]), kernels)
            if refused:
                say(f"   {kernels} refused {d_out}x{d_in}: {refused}")
                del layers[kernels]
        for name, make in (("fp8", Fp8Linear), ("fp8 2:4", Fp8SparseLinear)):
            try:
                layers[name] = make(layer)
                with torch.inference_mode():
                    layers[name](torch.randn(16, d_in, device="cuda", dtype=torch.float16))
            except Exception as e:  # noqa: BLE001 - a form this GPU or torch does not run is left out, said why
                layers.pop(name, None)
                say(f"   {name} refused {d_out}x{d_in}: {why(e)}")
        for tokens in token_counts:
            x = torch.randn(tokens, d_in, device="cuda", dtype=torch.float16)
            ms, failed = {}, {}
            with torch.inference_mode():
                for k, m in layers.items():
                    ms[k] = 1000 * timed(lambda m=m, x=x: m(x), iters, True)
                for k, m in layers.items():
                    try:  # a host sync inside the form cannot be captured: said, and the other forms go on
                        ms[f"{k} graph"] = 1000 * timed(graphed(lambda m=m, x=x: m(x)), iters, True)
                    except Exception as e:  # noqa: BLE001
                        failed[f"{k} graph"] = why(e)
                        say(f"   {k} {d_out}x{d_in} @ {tokens} tokens: no CUDA graph: {why(e)}")
            rows.append({"in": d_in, "out": d_out, "tokens": tokens, "ms": ms, "failed": failed})
            say(f"   {d_out}x{d_in} @ {tokens:5d} tokens: " + ", ".join(
                f"{k} {v:.3f} ms ({ms.get('dense graph' if 'graph' in k else 'dense', float('nan')) / v:.2f}x)"
                for k, v in ms.items()))
    return rows


def step3(build: Path) -> dict:
    from mfdeploy.runtime import probe_backends

    say("3. the other GPU backends on this machine")
    probed = probe_backends(build, ["ort-cuda", "ort-trt", "trt", "torch-cuda", "torch-cuda-sparse"])
    for name, reason in probed.items():
        say(f"   {name}: {'available' if reason is None else 'skipped: ' + reason}")
    return probed


def step_bench(build: Path) -> list[dict]:
    """`mfdeploy bench` on the bundled GPU build: torch (CPU) against torch-cuda and torch-cuda-sparse."""
    say("3b. mfdeploy bench on the bundled build: torch, torch-cuda, torch-cuda-sparse (pruned vs dense)")
    rows_path = build / "gpu_bench_rows.json"
    cli("bench", str(build), "--backends", "torch,torch-cuda,torch-cuda-sparse", "--batch-sizes", "1,32",
        "--iters", "20", "--min-time", "0.2", "--json", str(rows_path))
    return json.loads(rows_path.read_text())


def machine() -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None, "driver": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = "unknown (nvidia-smi failed)"
    return info


def markdown(result: dict) -> str:
    """The report: whatever steps ran (a step that failed shows its error)."""
    m = result["machine"]
    lines = [f"GPU {m['gpu']}, driver {m['driver']}, torch {m['torch']}, CUDA {m['cuda']}; host load average "
             f"(1, 5, 15 min) at the start {result.get('load_avg_start')}, at the end {result.get('load_avg_end')}",
             ""]
    lines += [f"- **step {name} failed**: {err}" for name, err in result.get("errors", {}).items()]
    lines += [f"- step {name} not run: {why}" for name, why in result.get("skipped", {}).items()]
    s1 = result.get("bundled")
    if s1:
        lines += [f"- bundled 2:4 build on the GPU: {s1['build_s']:.1f} s; masks agree with the CPU's on "
                  f"{100 * s1['masks_agreement']:.4f}% of weights (bar 99.9%)"]
    v = result.get("vitb32")
    if v:
        for name, p in v["prune"].items():
            peak = "" if p["peak_gpu_gb"] is None else f", peak GPU memory {p['peak_gpu_gb']:.2f} GB"
            lines.append(f"- ViT-B/32 prune {name}: {p['seconds']:.1f} s{peak}")
        for name, n in v["sparse_layers"].items():
            refused = v["dense_layers"][name]
            lines.append(f"- {name}: {n} linears on sparse kernels, {len(refused)} refused {sorted(refused)[:4]}")
        lines += ["", "| model | tower | batch | items/s eager | ms eager | items/s CUDA graph | ms CUDA graph "
                  "| min cosine vs fp32 |", "|---|---|---|---|---|---|---|---|"]
        for r in v["towers"]:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['tower']} | {r['batch']} | failed: {r['error']} | | | | |")
                continue
            graph = (f"{r['graph_items_per_s']:.1f} | {r['graph_ms']:.2f}" if "graph_ms" in r
                     else f"{r.get('graph_error', '-')} | ")
            lines.append(f"| {r['model']} | {r['tower']} | {r['batch']} | {r['items_per_s']:.1f} | {r['ms']:.2f} "
                         f"| {graph} | {r['min_cosine_vs_fp32']:.5f} |")
    if result.get("kernels"):
        names = list(dict.fromkeys(k for r in result["kernels"] for k in r["ms"]))
        lines += ["", "One linear on 2:4 weights (ms per call; x: fp16 dense / this, eager and in a CUDA graph):", "",
                  "| shape | tokens | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for r in result["kernels"]:
            d = r["ms"]
            base = {k: d.get("dense graph" if "graph" in k else "dense") for k in names}
            lines.append(f"| {r['out']}x{r['in']} | {r['tokens']} | "
                         + " | ".join(("-" if k not in d else f"{d[k]:.3f}" if base[k] is None
                                       else f"{d[k]:.3f} ({base[k] / d[k]:.2f}x)") for k in names) + " |")
    if result.get("backends"):
        lines += ["", "| backend | status |", "|---|---|"]
        lines += [f"| {k} | {'available' if v is None else 'skipped: ' + v} |" for k, v in result["backends"].items()]
    runner_rows = result.get("runners", []) + result.get("runners_l14", [])
    if runner_rows:
        lines += ["", "The torch-cuda runner (text at 77 tokens; % of the dense fp16 peak):", "",
                  "| model | runner | tower | batch | ms | items/s | TFLOP/s | % peak | min cosine vs eager | notes |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in runner_rows:
            if "error" in r:
                state = r["error"] if r["error"].startswith("skipped") else f"failed: {r['error']}"
                lines.append(f"| {r.get('model', 'ViT-B/32')} | {r['runner']} | {state} | | | | | | | |")
                continue
            pct = "-" if r.get("pct_of_fp16_peak") is None else f"{r['pct_of_fp16_peak']:.1f}"
            notes = "; ".join(f"{k}: {r[k]}" for k in ("graphs", "sparse_linears", "precision") if r.get(k))
            lines.append(f"| {r.get('model', 'ViT-B/32')} | {r['runner']} | {r['tower']} | {r['batch']} | "
                         f"{r['ms']:.2f} | {r['items_per_s']:.1f} | {r['tflops']:.1f} | {pct} | "
                         f"{r['min_cosine_vs_eager']:.5f} | {notes} |")
    if result.get("bench"):
        lines += ["", "`mfdeploy bench` (bundled build, text at 16 tokens):", "",
                  "| backend | variant | tower | batch | items/s | p50 ms |", "|---|---|---|---|---|---|"]
        for r in result["bench"]:
            if "throughput" in r:
                lines.append(f"| {r['backend']} | {r['variant']} | {r['tower']} | {r['batch']} | "
                             f"{r['throughput']:.1f} | {r['p50_ms']:.2f} |")
            elif r.get("tower") in (None, "vision") and r.get("batch") in (None, 1):
                lines.append(f"| {r['backend']} | {r.get('variant', '')} | unavailable: {r.get('reason', '')} "
                             "| | | |")
    serve = result.get("serve")
    if serve:
        lines += ["", f"`mfdeploy serve` under load (`benchmarks/serve_load.py`, {serve['backend']}):", "",
                  *serve["table"], "", *(f"- {b}" for b in serve["bars"]), f"- failed requests (not 503): "
                  f"{serve['failed']}"]
    return "\n".join(lines) + "\n"


def step_serve(tmp: Path, dry: bool) -> dict:
    """`benchmarks/serve_load.py` serving ViT-B/32 images from the torch-cuda backend: dynamic batching against
    `--max-batch 1` at 16 clients, p99 against p50, failed requests (issue 14's last bar; issue 30). The dry run
    serves the smoke-sized model from the CPU `torch` backend."""
    backend = "torch" if dry else "torch-cuda"
    say(f"6. mfdeploy serve under load: ViT-B/32 images from {backend}, batching vs --max-batch 1")
    out = tmp / "serve"
    argv = [sys.executable, str(Path(__file__).parent / "serve_load.py"), "--skip-bundled", "--vitb32-backends",
            backend, "--vitb32-requests", "32" if dry else "160", "--vitb32-build", str(tmp / "serve-vitb32"),
            "--out", str(out), *(["--smoke"] if dry else [])]
    left = BUDGET["s"] + 60 - (time.perf_counter() - T0)  # the server's step may run a minute past the budget
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    subprocess.run(argv, check=True, timeout=max(left, 30), env={**os.environ, "PYTHONPATH": path})
    found = json.loads((out / "serve_load.json").read_text())
    table = (out / "serve_load.md").read_text().split("\n\n")[0].splitlines()
    return {"backend": backend, "bars": found["bars"], "failed": found["failed"], "rows": found["rows"],
            "table": table}


def guarded(result: dict, key: str, step) -> None:
    """Run one step into result[key]; a failure is printed and recorded, and the later steps still run."""
    try:
        result[key] = step()
    except Exception as e:  # noqa: BLE001 - the report says which step failed and why, then goes on
        result.setdefault("errors", {})[key] = why(e)
        say(f"   step {key} FAILED: {result['errors'][key]}")
        traceback.print_exc()


def write(result: dict, out: Path, name: str) -> None:
    """Both reports, each written whole (temporary file + rename)."""
    from mfdeploy.artifacts.io import atomic_file, write_json

    write_json(out / f"{name}.json", result)
    atomic_file(out / f"{name}.md", lambda tmp: tmp.write_text(markdown(result)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--cpu-dry-run", action="store_true", help="check the script on the CPU (numbers mean nothing)")
    ap.add_argument("--budget-s", type=float, default=BUDGET["s"],
                    help="no step or runner variant starts after this many seconds (the check's 8-minute bound)")
    args = ap.parse_args()
    BUDGET["s"] = args.budget_s
    if not args.cpu_dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is "
                         "False); --cpu-dry-run checks the script itself on the CPU")
    device = "cpu" if args.cpu_dry_run else "cuda"
    result = {"machine": machine(), "device": device, "load_avg_start": load_average()}
    say(f"{result['machine']}; load average {result['load_avg_start']}")
    name = "gpu_check_dry_run" if args.cpu_dry_run else "gpu_check"
    iters = args.iters if not args.cpu_dry_run else 2

    def save() -> None:
        result["seconds"], result["load_avg_end"] = time.perf_counter() - T0, load_average()
        write(result, args.out, name)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        build = Path(tmp) / "build"
        steps = (("bundled", lambda: step1(Path(tmp), device)),
                 ("vitb32", lambda: step2(device, iters, args.cpu_dry_run)),
                 *((("kernels", lambda: step_kernels(iters)),) if not args.cpu_dry_run else ()),
                 ("backends", lambda: step3(build)),
                 ("bench", lambda: step_bench(build)),
                 ("runners", lambda: step_runners(device, iters, args.cpu_dry_run, "b32",
                                                  result.setdefault("runners", []), save)),
                 ("serve", lambda: step_serve(Path(tmp), args.cpu_dry_run)),
                 ("runners_l14", lambda: step_runners(device, iters, args.cpu_dry_run, "l14",
                                                      result.setdefault("runners_l14", []), save)))
        for key, step in steps:
            if over_budget():
                result.setdefault("skipped", {})[key] = f"the check's {BUDGET['s']:.0f} s budget was spent"
                say(f"   step {key} not run: {result['skipped'][key]}")
                continue
            guarded(result, key, step)
            save()  # after every step: a run cut short still leaves its report
    say(f"done in {result['seconds']:.0f} s: {args.out / name}.json and .md"
        + (f"; FAILED steps: {', '.join(result['errors'])}" if result.get("errors") else ""))
    if result.get("errors"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
