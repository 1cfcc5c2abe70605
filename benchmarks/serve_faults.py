"""Faults against `mfdeploy serve` over loopback: oversized images, SIGTERM under a long queue, bad requests.

    python benchmarks/serve_faults.py [--build DIR] [--quick]

Serves the bundled model (a MULTIFLOW 0.5 build made here with `mfdeploy
build --ratio 0.5`, about a minute on 2 cores; `--build DIR` serves DIR
instead) with `mfdeploy serve` (ONNX Runtime CPU) on 127.0.0.1, and, bounded
in count and time (under 3 minutes on 2 cores, the build included):

1. oversized images: a burst of requests, a few at a time, each holding one
   PNG over the server's `--max-image-pixels` (413 expected, found from the
   header before any pixel is decoded); then a burst of large images under
   the limit (200), whose memory must come back once it is over;
2. bad requests: one of every kind the server refuses (bad JSON, wrong or no
   Content-Type, missing fields, bad base64, not an image, unknown modality,
   too many items, an over-long text, no or a wrong API key, ...), each with
   the status it should get;
3. SIGTERM under a long queue: a second server (`--grace-s`) gets many
   concurrent requests of many large images (far more decoding than the grace
   period holds) and SIGTERM a moment later: every request must get 200 or
   503 with Retry-After, never a reset or a 500, and the process must exit
   within the grace period.

Prints a markdown table: per scenario the requests, the status codes seen
(-1: a connection reset or other transport error), the expected ones, the
server's RSS before, at its peak during (sampled every 20 ms) and settled
(3 s after), and the wall time; then each bad request, the time from SIGTERM
to exit and the exit code, and the load average (1, 5, 15 min) before and after.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LISTEN = re.compile(r"on http://([\d.]+):(\d+)")
KEY = "serve-faults-key"


class Server:
    """A `mfdeploy serve` process on a free loopback port, its log, and its RSS sampled on demand."""

    def __init__(self, build: Path, log: Path, *args: str):
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
        env.pop("MFDEPLOY_API_KEY", None)
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "mfdeploy.cli", "serve", str(build), "--port", "0",
                                          *args], stdout=f, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while (m := LISTEN.search(log.read_text())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server failed: {log.read_text()}")
            time.sleep(0.1)
        self.url = f"http://{m.group(1)}:{m.group(2)}"
        while httpx.get(self.url + "/health").status_code != 200:
            time.sleep(0.1)

    def rss_mib(self) -> float:
        """Resident memory now, in MiB (from /proc; 0 once the process is gone)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0.0
        found = re.search(r"VmRSS:\s+(\d+) kB", text)  # absent once the process is a zombie
        return int(found.group(1)) / 1024 if found else 0.0

    def stop(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds from the signal to the exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        return rc, time.monotonic() - t0


class PeakRss:
    """The server's RSS sampled every 20 ms on a thread while the block runs."""

    def __init__(self, server: Server):
        self.server, self.peak, self._stop = server, 0.0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.before = self.server.rss_mib()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_mib())
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def png(side: int, mode: str = "L") -> bytes:
    """A `side` x `side` PNG that compresses to almost nothing (every row the same) but decodes in full."""
    row = np.linspace(0, 255, side, dtype=np.uint8)[None, :]
    pixels = np.tile(row, (side, 1)) if mode == "L" else np.tile(row[..., None], (side, 1, 3))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def post(url: str, path: str, body, headers: dict | None = None, key: str | None = KEY) -> httpx.Response | None:
    """One POST (a JSON body, or raw bytes as given); None on a transport error (a reset, a refused connection)."""
    headers = {k: v for k, v in {"content-type": "application/json", **(headers or {})}.items() if v is not None}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        return httpx.post(url + path, content=content, headers=headers, timeout=120)
    except httpx.TransportError:
        return None


def code(resp: httpx.Response | None) -> int:
    return -1 if resp is None else resp.status_code


def bad_requests(max_items: int) -> list[tuple[str, str, object, dict, str | None, set[int]]]:
    """(what, path, body, extra headers, API key, acceptable statuses) for every kind of refused request."""
    whole = png(32, "RGB")
    small = uri(whole)
    emb = "/v1/embeddings"
    return [
        ("bad JSON", emb, b"{nope", {}, KEY, {400}),
        ("a JSON array", emb, b"[1, 2]", {}, KEY, {400}),
        ("Content-Type text/plain", emb, b'{"input": "x"}', {"content-type": "text/plain"}, KEY, {415}),
        ("no Content-Type", emb, b'{"input": "x"}', {"content-type": None}, KEY, {415}),
        ("missing input", emb, {"modality": "text"}, {}, KEY, {400}),
        ("empty input list", emb, {"input": []}, {}, KEY, {400}),
        ("a number among the texts", emb, {"input": ["ok", 3]}, {}, KEY, {400}),
        ("unknown modality", emb, {"input": "x", "modality": "audio"}, {}, KEY, {400}),
        ("too many items", emb, {"input": ["x"] * (max_items + 1)}, {}, KEY, {413}),
        ("over-long text", emb, {"input": ["a red circle " * 2000]}, {}, KEY, {400}),
        ("bad truncate", emb, {"input": "x", "truncate": "yes"}, {}, KEY, {400}),
        ("wrong dimensions", emb, {"input": "x", "dimensions": 7}, {}, KEY, {400}),
        ("bad encoding_format", emb, {"input": "x", "encoding_format": "int8"}, {}, KEY, {400}),
        ("bad base64 image", emb, {"input": ["!!!"], "modality": "image"}, {}, KEY, {400}),
        ("not an image", emb, {"input": [base64.b64encode(b"hello").decode()], "modality": "image"}, {}, KEY,
         {400}),
        ("truncated PNG", emb, {"input": [uri(whole[:len(whole) // 2])], "modality": "image"}, {}, KEY, {400}),
        ("a text data URI as image", emb, {"input": ["data:text/plain;base64,aGk="], "modality": "image"}, {},
         KEY, {400}),
        ("body over --max-body-mb", emb, {"input": ["x" * 3_000_000]}, {}, KEY, {413}),
        ("classify: missing image", "/v1/classify", {"labels": ["a"]}, {}, KEY, {400}),
        ("classify: labels not a list", "/v1/classify", {"image": small, "labels": "circle"}, {}, KEY, {400}),
        ("classify: template without {}", "/v1/classify", {"image": small, "labels": ["a"], "template": "x"}, {},
         KEY, {400}),
        ("no API key", emb, {"input": "x"}, {}, None, {401}),
        ("wrong API key", emb, {"input": "x"}, {}, "wrong", {401}),
        ("unknown route", "/v1/nothing", {"input": "x"}, {}, KEY, {404}),
    ]


def burst(server: Server, count: int, parallel: int, side: int, expected: str) -> dict:
    """`count` requests of one `side` x `side` PNG, `parallel` at a time; RSS settled 3 s after."""
    body = {"input": [uri(png(side))], "modality": "image"}  # encoded once: the client's cost is not the server's
    t0 = time.monotonic()
    with PeakRss(server) as rss, ThreadPoolExecutor(parallel) as pool:
        codes = [code(r) for r in pool.map(lambda _: post(server.url, "/v1/embeddings", body), range(count))]
    seconds = time.monotonic() - t0
    time.sleep(3)
    what = "oversized" if expected == "413" else "large, under the limit"
    return {"scenario": f"{what}: {count} requests of one {side}x{side} PNG, {parallel} at a time",
            "codes": codes, "expected": expected, "rss": (rss.before, rss.peak, server.rss_mib()), "seconds": seconds}


def bad(server: Server, max_items: int) -> tuple[dict, list[tuple[str, set[int], int, str]]]:
    rows = []
    t0 = time.monotonic()
    with PeakRss(server) as rss:
        for what, path, body, headers, key, want in bad_requests(max_items):
            resp = post(server.url, path, body, headers, key)
            message = ""
            if resp is not None:
                try:
                    message = resp.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = resp.text[:80]
            rows.append((what, want, code(resp), message))
        healthy = httpx.get(server.url + "/health").status_code
    seconds = time.monotonic() - t0
    summary = {"scenario": f"bad requests: {len(rows)} kinds, one each (then GET /health: {healthy})",
               "codes": [c for _, _, c, _ in rows], "expected": "4xx, as listed below",
               "rss": (rss.before, rss.peak, server.rss_mib()), "seconds": seconds}
    return summary, rows


def sigterm(build: Path, log: Path, grace: float, clients: int, images: int, side: int) -> dict:
    server = Server(build, log, "--grace-s", str(grace), "--max-items", str(images))
    body = {"input": [uri(png(side, "RGB"))] * images, "modality": "image"}
    results: list[httpx.Response | None] = []
    t0 = time.monotonic()
    with PeakRss(server) as rss, ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(post, server.url, "/v1/embeddings", body, None, None) for _ in range(clients)]
        time.sleep(1.5)
        rc, exit_s = server.stop()
        results = [f.result() for f in futures]
    codes = [code(r) for r in results]
    retry = all(r.headers.get("retry-after") for r in results if r is not None and r.status_code == 503)
    text = log.read_text()
    return {"scenario": f"SIGTERM 1.5 s into {clients} concurrent requests of {images} {side}x{side} PNGs "
                        f"(--grace-s {grace:g})",
            "codes": codes, "expected": "200 or 503 + Retry-After", "rss": (rss.before, rss.peak, 0.0),
            "seconds": time.monotonic() - t0, "exit_s": exit_s, "rc": rc, "retry_after": retry,
            "tracebacks": text.count("Traceback"), "grace": grace}


def table(rows: list[dict]) -> list[str]:
    out = ["| scenario | requests | status codes seen | expected | RSS before / peak / settled MiB | seconds |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        seen = ", ".join(f"{c}: {n}" for c, n in sorted(Counter(r["codes"]).items()))
        before, peak, settled = r["rss"]
        rss = f"{before:.0f} / {peak:.0f} / " + (f"{settled:.0f}" if settled else "exited")
        out.append(f"| {r['scenario']} | {len(r['codes'])} | {seen} | {r['expected']} | {rss} | {r['seconds']:.1f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, help="serve this build or export directory (default: build the bundled "
                                               "model here)")
    ap.add_argument("--quick", action="store_true", help="fewer and smaller requests, 2 s grace (the tests' mode)")
    args = ap.parse_args()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-faults-") as tmp_name:
        tmp = Path(tmp_name)
        build = args.build
        if build is None:
            build = tmp / "bundled"
            print("building the bundled model (MULTIFLOW 0.5) ...", flush=True)
            subprocess.run([sys.executable, "-m", "mfdeploy.cli", "build", "--ratio", "0.5", "--out", str(build)],
                           check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        max_items = 8 if args.quick else 64
        # the quick mode lowers the pixel limit, so that its oversized images are small to make and send
        limits = ["--max-image-pixels", "1000000", "--max-request-pixels", "4000000"] if args.quick else []
        server = Server(build, tmp / "faults.log", "--api-key", KEY, "--max-items", str(max_items),
                        "--max-body-mb", "2", *limits)
        try:
            # over --max-image-pixels (64 MP by default; 1 MP in the quick mode), then just under it: the memory
            # a burst of allowed images takes must come back
            rows = [burst(server, 4, 2, 1200, "413") if args.quick else burst(server, 12, 4, 9000, "413"),
                    burst(server, 4, 2, 900, "200") if args.quick else burst(server, 4, 2, 6000, "200")]
            summary, kinds = bad(server, max_items)
            rows.append(summary)
        finally:
            server.stop()
        term = sigterm(build, tmp / "sigterm.log", *((2.0, 12, 8, 1024) if args.quick else (5.0, 32, 16, 2048)))
        rows.append(term)
    load1 = os.getloadavg()
    print("\n".join(table(rows)))
    print("\n| bad request | expected | seen | message |\n|---|---|---|---|")
    for what, want, seen, message in kinds:
        flag = "" if seen in want else " MISMATCH"
        shown = message.replace("|", "/")[:110]
        print(f"| {what} | {'/'.join(map(str, sorted(want)))} | {seen}{flag} | {shown} |")
    print(f"\nSIGTERM to exit: {term['exit_s']:.2f} s (--grace-s {term['grace']:g}), exit code {term['rc']}, "
          f"every 503 with Retry-After: {term['retry_after']}, tracebacks in the log: {term['tracebacks']}")
    print(f"load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load0)}; "
          f"after: {', '.join(f'{x:.2f}' for x in load1)}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
