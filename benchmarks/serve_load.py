"""Load on `mfdeploy serve` over loopback: throughput and latency at 1, 4, 16 and 64 concurrent clients.

    python benchmarks/serve_load.py [--requests 400] [--vitb32-requests 160] [--skip-vitb32] [--skip-bundled]
                                    [--bundled-build DIR] [--vitb32-build DIR] [--backends ort-cpu]
                                    [--vitb32-backends ort-cpu,ort-int8] [--smoke]

Starts `mfdeploy serve` (ONNX Runtime CPU, its default threads) on
127.0.0.1 and drives it with N concurrent clients (asyncio + aiohttp, one
keep-alive connection each) sending a fixed number of single-item
`/v1/embeddings` requests (`encoding_format: base64`, as the OpenAI Python
client sends), for:

1. the bundled model (MULTIFLOW 0.5 build), images and texts;
2. ViT-B/32 (`CLIPConfig()` defaults, random weights, magnitude 0.5 build
   made here with `mfdeploy build --int8`, or `--vitb32-build`), images
   (224x224), served twice: fp32 towers (`--backend ort-cpu`) and the INT8
   towers a CPU deployment serves (`--backend ort-int8`).

`--backends` and `--vitb32-backends` serve each workload with other
`mfdeploy serve --backend`s too (e.g. `openvino`, `openvino-int8`: OpenVINO
in the CPU's native precision, bf16 where it has it), one after the other
in the same run; each is compared with `ort-cpu` at 16 clients.
`--skip-bundled` serves ViT-B/32 only (e.g. `--skip-bundled
--vitb32-backends ort-cpu,openvino`: issue 29's served comparison); write
it to another `--out` to keep the full table.

Each is served twice, with dynamic batching (`--max-batch 32 --max-delay-ms
5`) and without (`--max-batch 1`), and a last run uses a deliberately small
queue (`--max-queue 4`) so that the 503s it answers are counted. Prints, per
level: requests, ok, 503s, other failures, throughput, p50/p95/p99 latency
and the mean items per model call (from `/metrics`); then issue 14's bars:
batching vs `--max-batch 1` at 16 clients (>= 2x) and p99 / p50 at the level
where throughput saturates (< 3x), beside what the tower alone gains from
batch 1 to batch 16 (preprocessing + ONNX Runtime, no HTTP): the most any
batching can give a compute-bound model on this CPU. The client runs on the same two cores as
the server: the numbers are for this machine, loopback, client included.
Writes benchmarks/results/serve_load.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 16, 64)
LISTEN = re.compile(r"on http://([\d.]+):(\d+)")


def repo_env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH (the caller's entries kept after it)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


class Server:
    def __init__(self, build: Path, log: Path, *args: str):
        env = {**repo_env(), "COLUMNS": "200"}
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "mfdeploy.cli", "serve", str(build), "--port", "0",
                                          "--max-items", "64", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
        while (m := LISTEN.search(log.read_text())) is None:
            if self.proc.poll() is not None:
                raise SystemExit(f"server failed: {log.read_text()}")
            time.sleep(0.1)
        self.url = f"http://{m.group(1)}:{m.group(2)}"
        while httpx.get(self.url + "/health").status_code != 200:
            time.sleep(0.1)

    def batch_stats(self, tower: str) -> tuple[float, float]:
        text = httpx.get(self.url + "/metrics").text
        found = [re.search(rf'mfdeploy_batch_size_{k}\{{tower="{tower}"\}} ([\d.e+]+)', text) for k in ("sum", "count")]
        return tuple(float(m.group(1)) if m else 0.0 for m in found)  # no series before the tower's first call

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        assert rc == 0, rc


async def drive(url: str, bodies: list[dict], clients: int, n: int) -> dict:
    """`n` requests from `clients` concurrent clients; latencies of the successful ones.

    aiohttp, not httpx: httpx's async pool costs so much CPU per request at 64 connections (on the cores the
    server needs) that it measured itself: 151 req/s with p99 1.7 s where aiohttp drove the same server at 1443.
    """
    latencies, codes = [], []
    payloads = [json.dumps(b).encode() for b in bodies]  # encoded once: the client's cost is not the server's

    async def client(c: aiohttp.ClientSession, counter) -> None:
        for i in counter:
            t0 = time.perf_counter()
            try:
                async with c.post("/v1/embeddings", data=payloads[i % len(payloads)],
                                  headers={"content-type": "application/json"}) as r:
                    await r.read()
                    codes.append(r.status)
                    if r.status == 200:
                        latencies.append(time.perf_counter() - t0)
            except aiohttp.ClientError:
                codes.append(-1)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as c:
        warm = iter(range(2 * clients))  # warm-up: open the connections, first calls
        await asyncio.gather(*(client(c, warm) for _ in range(clients)))
        latencies.clear()
        codes.clear()
        counter = iter(range(n))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, counter) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    ok = codes.count(200)
    return {"clients": clients, "requests": n, "ok": ok, "full_503": codes.count(503),
            "failed": n - ok - codes.count(503), "throughput": ok / wall,
            **({f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)} if ok else {})}


def image_bodies(size: int, count: int = 32) -> list[dict]:
    from mfdeploy.data import world

    out = []
    for seed in range(20_000_000, 20_000_000 + count):
        buf = io.BytesIO()
        world.render(world.make_scene(seed)).resize((size, size)).save(buf, format="PNG")
        out.append({"input": ["data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()],
                    "modality": "image", "encoding_format": "base64"})
    return out


def text_bodies(count: int = 32) -> list[dict]:
    from mfdeploy.data import world

    return [{"input": [world.make_scene(s).caption()], "encoding_format": "base64"}
            for s in range(20_000_000, 20_000_000 + count)]


def run_server(build: Path, tmp: Path, label: str, bodies: list[dict], tower: str, n: int, args: list[str],
               levels=LEVELS, backend: str = "ort-cpu") -> list[dict]:
    log = tmp / f"{label.replace('/', '_').replace(' ', '_')}.log"
    server = Server(build, log, "--backend", backend, *args)
    rows = []
    try:
        for clients in levels:
            s0, c0 = server.batch_stats(tower)
            row = asyncio.run(drive(server.url, bodies, clients, n))
            s1, c1 = server.batch_stats(tower)
            row.update(label=label, server=" ".join(args), backend=backend,
                       mean_batch=(s1 - s0) / max(1.0, c1 - c0))
            rows.append(row)
            print(f"  {label} {' '.join(args)} @ {clients}: {row['throughput']:.1f} req/s, "
                  f"p50 {row.get('p50', 0):.1f} ms, p99 {row.get('p99', 0):.1f} ms, 503 {row['full_503']}, "
                  f"failed {row['failed']}", flush=True)
    finally:
        server.stop()
    return rows


def model_bound(build: Path, tower: str, bodies: list[dict], batch: int = 16, backend: str = "ort-cpu") -> float:
    """Items/s of the tower alone at `batch` over batch 1: the server's own model call, no HTTP.

    What batching can gain on this CPU at most, with no HTTP in the way: the bar a compute-bound model meets.
    """
    from mfdeploy.server import ServeConfig, ServerState
    from mfdeploy.server.preprocess import decode_image

    state = ServerState(ServeConfig(build_dir=build, backend=backend).validate())
    state.load()  # the runner and preprocessing `mfdeploy serve` uses (ONNX Runtime, no spinning)
    items = [b["input"][0] for b in bodies]
    if tower == "vision":
        items = [state.pre.images([decode_image(u, "x")])[0] for u in items]  # what the server queues: [3, H, W]
    run = state.embed_images if tower == "vision" else state.embed_texts
    per_item = {}
    for b in (1, batch):
        chunk = (items * batch)[:b]
        run(chunk)
        t0, calls = time.perf_counter(), 0
        while time.perf_counter() - t0 < 3 or calls < 3:
            run(chunk)
            calls += 1
        per_item[b] = (time.perf_counter() - t0) / (calls * b)
    state.runner.close()
    return per_item[1] / per_item[batch]


def vitb32_build(out: Path, int8: bool = True, smoke: bool = False) -> Path:
    """A magnitude 0.5 build of the random-weight ViT-B/32 made with `mfdeploy build`, with its INT8 towers
    (`--int8`) when `int8`; `smoke`: the 2-layer model of the same layout (64x64 images)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from scale import write_pairs
    from vitb32 import WrappedAdapter, vitb32

    if (out / "build" / "build.json").is_file():
        return out / "build"
    out.mkdir(parents=True, exist_ok=True)
    WrappedAdapter(vitb32(smoke=smoke)).save(out / "model")
    pairs = write_pairs(out, 32, image_size(smoke))  # calibration: shapes-world images at the model's size
    subprocess.run([sys.executable, "-m", "mfdeploy.cli", "build", "--model", str(out / "model"), "--ratio", "0.5",
                    "--method", "magnitude", *(["--int8"] if int8 else []), "--calib", str(pairs),
                    "--calib-samples", "32", "--out", str(out / "build")],
                   check=True,
                   env=repo_env())
    return out / "build"


def image_size(smoke: bool) -> int:
    return 64 if smoke else 224


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="requests per level, bundled model")
    ap.add_argument("--vitb32-requests", type=int, default=160, help="requests per level, ViT-B/32")
    ap.add_argument("--skip-vitb32", action="store_true")
    ap.add_argument("--skip-bundled", action="store_true", help="serve ViT-B/32 only")
    ap.add_argument("--vitb32-build", type=Path, help="reuse a ViT-B/32 build directory (made there if absent)")
    ap.add_argument("--bundled-build", type=Path, help="reuse a bundled-model build directory (made there if absent)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--backends", default="ort-cpu", help="`mfdeploy serve --backend`s of the bundled model")
    ap.add_argument("--vitb32-backends", default="ort-cpu,ort-int8", help="... and of ViT-B/32's images")
    ap.add_argument("--smoke", action="store_true",
                    help="ViT-B/32's layout at 2 layers and 64x64 images: checks the script (numbers mean nothing)")
    args = ap.parse_args()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp_name:
        tmp = Path(tmp_name)
        if args.skip_bundled and args.skip_vitb32:
            raise SystemExit("serve_load.py: --skip-bundled and --skip-vitb32 leave nothing to serve")
        bundled = args.bundled_build or tmp / "bundled"
        if not args.skip_bundled and not (bundled / "build.json").is_file():
            print("building the bundled model (MULTIFLOW 0.5) ...", flush=True)
            subprocess.run([sys.executable, "-m", "mfdeploy.cli", "build", "--ratio", "0.5", "--out", str(bundled)],
                           check=True, capture_output=True, env=repo_env())
        plans = [(run_label(f"bundled {what}", backend), bundled, bodies, tower, args.requests, backend)
                 for backend in ([] if args.skip_bundled else args.backends.split(","))
                 for what, bodies, tower in (("image", image_bodies(96), "vision"), ("text", text_bodies(), "text"))]
        if not args.skip_vitb32:
            vit = args.vitb32_build or (tmp / "vitb32")
            int8 = any("int8" in b for b in args.vitb32_backends.split(","))  # only a backend that serves them
            print(f"building ViT-B/32 (magnitude 0.5{', --int8' if int8 else ''}) ...", flush=True)
            vit = vitb32_build(vit, int8=int8, smoke=args.smoke)
            plans += [(run_label("ViT-B/32 image", backend), vit, image_bodies(image_size(args.smoke)), "vision",
                       args.vitb32_requests,
                       backend) for backend in args.vitb32_backends.split(",")]
        rows, bounds = [], {}
        for label, build, bodies, tower, n, backend in plans:
            rows += run_server(build, tmp, label, bodies, tower, n, ["--max-batch", "32", "--max-delay-ms", "5"],
                               backend=backend)
            rows += run_server(build, tmp, label, bodies, tower, n, ["--max-batch", "1"], levels=(16,),
                               backend=backend)
            bounds[label] = model_bound(build, tower, bodies, backend=backend)
        label, build, bodies, tower, n, _ = plans[0]
        rows += run_server(build, tmp, label, bodies, tower, n, ["--max-batch", "8", "--max-queue", "4",
                                                                 "--max-items", "1"], levels=(64,))
    load1 = os.getloadavg()
    report(rows, bounds, args.out, load0, load1)


def run_label(workload: str, backend: str) -> str:
    """A run's name: the workload, and the backend unless it is ort-cpu (`ort-int8`: "int8", as before)."""
    return workload if backend == "ort-cpu" else f"{workload}, {'int8' if backend == 'ort-int8' else backend}"


def versus_ort(rows: list[dict]) -> list[str]:
    """Each other backend's throughput at 16 clients (batching on) over ort-cpu's on the same workload."""
    at16 = {(r["label"].split(", ")[0], r.get("backend")): r["throughput"] for r in rows
            if r["clients"] == 16 and r["server"].startswith("--max-batch 32")}
    return [f"{workload}: {backend} / ort-cpu at 16 clients = {value / at16[workload, 'ort-cpu']:.2f}x"
            + (" (issue 29's bar: >= 1.7x)" if backend == "openvino" and workload == "ViT-B/32 image" else "")
            for (workload, backend), value in at16.items() if backend != "ort-cpu" and (workload, "ort-cpu") in at16]


def report(rows: list[dict], bounds: dict[str, float], out: Path, load0, load1) -> None:
    table = Table(title=f"mfdeploy serve over loopback ({os.cpu_count()} CPUs, client on the same machine)")
    head = ["workload", "server", "clients", "requests", "ok", "503", "failed", "req/s", "p50 ms", "p95 ms",
            "p99 ms", "items/call"]
    for h in head:
        table.add_column(h, justify="left" if h in ("workload", "server") else "right")
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], r["server"], str(r["clients"]), str(r["requests"]), str(r["ok"]), str(r["full_503"]),
                 str(r["failed"]), f"{r['throughput']:.1f}", *(f"{r.get(q, float('nan')):.1f}"
                                                                for q in ("p50", "p95", "p99")),
                 f"{r['mean_batch']:.1f}"]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    bars = []
    for label in dict.fromkeys(r["label"] for r in rows):
        batched = [r for r in rows if r["label"] == label and r["server"].startswith("--max-batch 32")]
        single = [r for r in rows if r["label"] == label and r["server"] == "--max-batch 1"]
        if not batched or not single:
            continue
        at16 = next(r for r in batched if r["clients"] == 16)
        peak = max(r["throughput"] for r in batched)
        sat = next(r for r in batched if r["throughput"] >= 0.95 * peak)  # the first level within 5% of the peak
        gain = at16["throughput"] / single[0]["throughput"]
        bars.append(f"{label}: batching / --max-batch 1 at 16 clients = {gain:.2f}x"
                    f" (bar >= 2x; the tower alone gains {bounds[label]:.2f}x from batch 1 to 16); saturates at "
                    f"{sat['clients']} clients, p99 / p50 there = {sat['p99'] / sat['p50']:.2f} (bar < 3)")
    bars += versus_ort(rows)
    failed = sum(r["failed"] for r in rows)
    console = Console(width=200)
    console.print(table)
    for line in bars:
        console.print(line)
    console.print(f"failed requests (not 503): {failed}; load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps({"rows": rows, "bars": bars, "model_bound": bounds,
                                                     "failed": failed,
                                                     "loadavg": [load0, load1]}, indent=2))
    (out / "serve_load.md").write_text("\n".join(md + [""] + [f"- {b}" for b in bars]
                                                 + [f"- load average before {load0[0]:.2f}, after {load1[0]:.2f}"])
                                       + "\n")


if __name__ == "__main__":
    main()
