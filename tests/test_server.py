"""`mfdeploy serve` (issue 14): a real server on a free loopback port, driven over HTTP.

Each server runs in its own process (`python -m mfdeploy.cli serve ... --port 0`), so SIGTERM and the exit
code are the real ones; stderr goes to a file (a pipe nobody reads would fill and stall the server).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import make_build

from mfdeploy.data import world

REPO = Path(__file__).resolve().parents[1]
LISTEN = re.compile(r"on http://([\d.]+):(\d+)")
TEXTS = ["a red circle.", "a photo of a large blue square at the top left of the image.", "star"]


class Server:
    """A `mfdeploy serve` process and a client for it."""

    def __init__(self, build: Path, log: Path, *args: str):
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "mfdeploy.cli", "serve", str(build), "--port", "0",
                                          *args], stdout=f, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while (match := LISTEN.search(log.read_text())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start (rc {self.proc.poll()}): {log.read_text()}")
            time.sleep(0.1)
        self.url = f"http://{match.group(1)}:{match.group(2)}"
        self.client = httpx.Client(base_url=self.url, timeout=60)
        while self.client.get("/health").status_code != 200:
            assert self.proc.poll() is None, log.read_text()
            time.sleep(0.1)

    def post(self, path: str, body) -> httpx.Response:
        return self.client.post(path, json=body)

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def build(tiny_clip_dir, tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("server") / "build", tiny_clip_dir, onnx_dense=False)


@pytest.fixture(scope="module")
def server(build, tmp_path_factory):
    s = Server(build, tmp_path_factory.mktemp("server-log") / "serve.log", "--max-delay-ms", "20", "--max-items", "8",
               "--max-queue", "64", "--max-body-mb", "0.5")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def reference(build):
    """The build's own ONNX towers and preprocessing, without the server."""
    from mfdeploy.models import load
    from mfdeploy.runtime.ort_runner import OrtRunner

    adapter = load(build / "pruned")
    return adapter, OrtRunner(build / "onnx", threads=1)


def image_uri(seed: int, fmt: str = "PNG", prefix: bool = True) -> str:
    buf = io.BytesIO()
    world.render(world.make_scene(seed)).save(buf, format=fmt)
    data = base64.b64encode(buf.getvalue()).decode()
    return f"data:image/{fmt.lower()};base64,{data}" if prefix else data


def decode(uri: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(uri.split(",")[-1]))).convert("RGB")


def embeddings(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def test_text_and_image_embeddings_match_onnx_runtime(server, reference):
    adapter, ort = reference
    got = embeddings(server.post("/v1/embeddings", {"input": TEXTS}))
    for text, row in zip(TEXTS, got):  # each text alone, unpadded, through the build's onnx/ towers
        ids, mask = adapter.tokenize([text])
        want = ort.embed_texts(ids.numpy(), mask.numpy())[0]
        assert float(row @ want) >= 0.999 and abs(np.linalg.norm(row) - 1) < 1e-4
    uris = [image_uri(s) for s in (20_000_001, 20_000_002)] + [image_uri(20_000_003, "JPEG", prefix=False)]
    got = embeddings(server.post("/v1/embeddings", {"input": uris, "modality": "image"}))
    want = ort.embed_images(adapter.pixel_values([decode(u) for u in uris]).numpy())
    assert np.min(np.sum(got * want, axis=1)) >= 0.999
    one = embeddings(server.post("/v1/embeddings", {"input": TEXTS[0]}))  # a bare string: one embedding
    assert one.shape[0] == 1


def test_the_openai_model_list_names_the_model_served(server):
    """`GET /v1/models` (the openai client's `models.list()`, which some tools call first) was a 404."""
    resp = server.client.get("/v1/models")
    assert resp.status_code == 200
    body = resp.json()
    model = server.post("/v1/embeddings", {"input": "a"}).json()["model"]
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [model] != [""]
    assert body["data"][0]["object"] == "model" and isinstance(body["data"][0]["created"], int)
    assert 'endpoint="/v1/models"' in server.client.get("/metrics").text  # counted under its own name


def test_the_openai_model_retrieve_answers_for_the_model_served(server):
    """`GET /v1/models/{id}` (the openai client's `models.retrieve(id)`) was a 404 for every id."""
    listed = server.client.get("/v1/models").json()["data"][0]
    got = server.client.get(f"/v1/models/{listed['id']}")  # the id may hold a slash (an owner/name hub id)
    assert got.status_code == 200 and got.json() == listed
    other = server.client.get("/v1/models/gpt-4")
    assert other.status_code == 404
    error = other.json()["error"]
    assert error["type"] == "model_not_found" and error["param"] == "model"
    assert error["message"] == (f"model 'gpt-4' is not served here: this server serves {listed['id']!r} "
                                "(GET /v1/models lists it)")
    assert 'endpoint="/v1/models/{model}",status="200"' in server.client.get("/metrics").text


def test_openai_response_shape_and_base64(server):
    resp = server.post("/v1/embeddings", {"input": TEXTS, "model": "anything", "encoding_format": "base64"})
    body = resp.json()
    assert body["object"] == "list" and body["model"] and body["usage"]["prompt_tokens"] > len(TEXTS)
    rows = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])
    assert np.allclose(rows, embeddings(server.post("/v1/embeddings", {"input": TEXTS})), atol=1e-6)


def test_classify_is_the_zero_shot_softmax(server, reference):
    adapter, ort = reference
    labels = ["circle", "square", "triangle", "star"]
    uri = image_uri(20_000_004)
    resp = server.post("/v1/classify", {"image": uri, "labels": labels, "template": "a photo of a {}."})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    img = ort.embed_images(adapter.pixel_values([decode(uri)]).numpy())[0]
    ids, mask = adapter.tokenize([f"a photo of a {x}." for x in labels])
    logits = float(adapter.model.logit_scale.detach().exp()) * (ort.embed_texts(ids.numpy(), mask.numpy()) @ img)
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert body["labels"] == labels and np.allclose(body["scores"], want, atol=1e-4)
    assert body["label"] == labels[int(np.argmax(want))] and abs(sum(body["scores"]) - 1) < 1e-5
    assert body["scoring"] == "softmax"  # CLIP's family scoring, stated in the response
    # serve.md's route table lists every key of the answer (it said {"labels", "scores", "label"})
    row = next(line for line in (Path(__file__).parents[1] / "docs" / "guides" / "serve.md").read_text().splitlines()
               if line.startswith("| `POST /v1/classify`"))
    documented = row.split("-> `{", 1)[1].split("}`", 1)[0]
    assert sorted(json.loads(f"[{documented}]")) == sorted(body)


def test_classify_template_braces_are_text(server, reference):
    """Only `{}` is the label's place: other braces are text (a `str.format` field here once gave a 500)."""
    adapter, ort = reference
    labels, uri = ["circle", "square"], image_uri(20_000_004)
    braces = server.post("/v1/classify", {"image": uri, "labels": labels, "template": "{x} a {} {0}"})
    assert braces.status_code == 200, braces.text
    img = ort.embed_images(adapter.pixel_values([decode(uri)]).numpy())[0]
    ids, mask = adapter.tokenize([f"{{x}} a {x} {{0}}" for x in labels])
    logits = float(adapter.model.logit_scale.detach().exp()) * (ort.embed_texts(ids.numpy(), mask.numpy()) @ img)
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.allclose(braces.json()["scores"], want, atol=1e-4)


def test_concurrent_requests_are_batched_and_answered_in_order(server, reference):
    adapter, ort = reference
    texts = [f"a photo of {n} {c} circles." for n in ("one", "two", "three") for c in world.COLOURS][:24]

    def one(text):
        return embeddings(httpx.post(server.url + "/v1/embeddings", json={"input": [text, "star"]}, timeout=60))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, texts))
    for text, rows in zip(texts, results):
        ids, mask = adapter.tokenize([text, "star"])
        assert np.min(np.sum(rows * ort.embed_texts(ids.numpy(), mask.numpy()), axis=1)) >= 0.999
    metrics = server.client.get("/metrics").text
    count = float(re.search(r'mfdeploy_batch_size_count\{tower="text"\} ([\d.e+]+)', metrics).group(1))
    total = float(re.search(r'mfdeploy_batch_size_sum\{tower="text"\} ([\d.e+]+)', metrics).group(1))
    assert total / count > 2, (total, count)  # two items per request: calls gathered more than one request


BAD = [
    ("not JSON", b"{nope", 400, "not JSON"),
    ("a JSON array", [1, 2], 400, "JSON object"),
    ("missing input", {"modality": "text"}, 400, "missing field 'input'"),
    ("empty list", {"input": []}, 400, "empty list"),
    ("empty string", {"input": ""}, 400, "'input' is an empty string"),  # not 'input[0]': no list was sent
    ("unknown modality", {"input": "x", "modality": "audio"}, 400, "unknown modality 'audio'"),
    ("not a string", {"input": ["ok", 3]}, 400, "'input[1]' must be a non-empty string"),
    ("too many items", {"input": ["x"] * 9}, 413, "more than the limit of 8"),
    ("not base64", {"input": ["!!!"], "modality": "image"}, 400, "input[0]: not valid base64"),
    ("not an image", {"input": [base64.b64encode(b"hello world").decode()], "modality": "image"}, 400,
     "input[0]: not a decodable image"),
    ("a text data URI", {"input": ["data:text/plain;base64,aGk="], "modality": "image"}, 400, "not an image"),
    ("oversized body", {"input": ["x" * 600_000]}, 413, "over the limit"),
    ("wrong dimensions", {"input": "x", "dimensions": 7}, 400, "dimensions 7"),
    ("bad encoding", {"input": "x", "encoding_format": "int8"}, 400, "encoding_format 'int8'"),
    ("false-like encoding", {"input": "x", "encoding_format": 0}, 400, "encoding_format 0"),
    ("nested too deeply", b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "nested too deeply"),
    ("lone surrogate", b'{"input": "abc \\ud800 def"}', 400, "lone UTF-16 surrogate"),
    ("a 5000-digit number", b'{"input": "a", "dimensions": ' + b"1" * 5000 + b"}", 400, "number of over"),
]


@pytest.mark.parametrize("what,body,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_embedding_requests_get_a_json_4xx(server, what, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = server.client.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert message in error["message"] and "\n" not in error["message"]
    assert server.client.get("/health").status_code == 200  # and it serves on
    assert embeddings(server.post("/v1/embeddings", {"input": "a red circle."})).shape[0] == 1


@pytest.mark.parametrize("body,message", [
    ({"labels": ["a"]}, "missing field 'image'"),
    ({"image": "x", "labels": "circle"}, "'labels' must be a list"),
    ({"image": "x", "labels": ["a"], "template": "no slot"}, "'template' must be a string with one '{}'"),
    ({"image": "x", "labels": ["a"], "template": "a {} and a {}"}, "'template' must be a string with one '{}'"),
    ({"image": "x", "labels": ["a"], "template": 3}, "'template' must be a string with one '{}'"),
    ({"image": "x", "labels": ["a"], "template": ""}, "'template' must be a string with one '{}'"),
    (b'{"image": "x", "labels": ["\\ud800"]}', "lone UTF-16 surrogate"),
    (b'{"image": "x", "labels": ["a"], "template": "\\ud800 {}"}', "lone UTF-16 surrogate"),
    ({"image": "!!", "labels": ["a"]}, "image: not valid base64"),
])
def test_bad_classify_requests(server, body, message):
    resp = server.client.post("/v1/classify", content=body, headers={"content-type": "application/json"}) \
        if isinstance(body, bytes) else server.post("/v1/classify", body)
    assert resp.status_code == 400 and message in resp.json()["error"]["message"], resp.text


def test_metrics_and_request_log(server):
    server.post("/v1/embeddings", {"input": "a red circle."})
    server.post("/v1/embeddings", {"input": []})
    text = server.client.get("/metrics").text
    for name in ('mfdeploy_requests_total{endpoint="/v1/embeddings",status="200"}',
                 'mfdeploy_requests_total{endpoint="/v1/embeddings",status="400"}',
                 'mfdeploy_request_errors_total{endpoint="/v1/embeddings",kind="client"}',
                 'mfdeploy_request_latency_seconds_bucket{endpoint="/v1/embeddings",le="0.1"}',
                 'mfdeploy_batch_size_bucket{le="1.0",tower="text"}', 'mfdeploy_queue_depth{tower="text"}',
                 'mfdeploy_inference_seconds_count{tower="text"}', "mfdeploy_ready 1.0"):
        assert name in text, name
    log = server.log.read_text()
    assert re.search(r"INFO POST /v1/embeddings 200 [\d.]+ ms", log) and "INFO POST /v1/embeddings 400" in log
    assert "with ort-cpu on http://127.0.0.1:" in log
    # request latencies in full resolution: uvloop's loop.time() counted whole milliseconds, so each health check
    # (well under one) was recorded as 0 or 1 ms and the sums were whole milliseconds
    for _ in range(20):
        server.client.get("/health")
    text = server.client.get("/metrics").text
    total = float(re.search(r'mfdeploy_request_latency_seconds_sum\{endpoint="/health"\} ([\d.e+-]+)', text)[1])
    assert abs(total * 1000 - round(total * 1000)) > 1e-6, total


def test_a_full_queue_answers_503_with_retry_after(build, tmp_path):
    s = Server(build, tmp_path / "log", "--max-batch", "1", "--max-queue", "1", "--max-items", "1",
               "--max-delay-ms", "0")
    try:
        def one(i):
            return httpx.post(s.url + "/v1/embeddings", json={"input": f"a photo of {i} circles."}, timeout=60)

        with ThreadPoolExecutor(24) as pool:
            resps = list(pool.map(one, range(96)))
        codes = [r.status_code for r in resps]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        full = next(r for r in resps if r.status_code == 503)
        assert full.headers["retry-after"] == "1" and "queue is full" in full.json()["error"]["message"]
        assert 'mfdeploy_queue_full_total{tower="text"}' in s.client.get("/metrics").text
    finally:
        assert s.stop() == 0


def test_sigterm_finishes_the_request_in_flight_and_exits_0(build, tmp_path):
    s = Server(build, tmp_path / "log", "--max-delay-ms", "1500")  # a lone request waits 1.5 s for company
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        pending = pool.submit(httpx.post, s.url + "/v1/embeddings", json={"input": "a red circle."}, timeout=60)
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        assert embeddings(pending.result()).shape[0] == 1  # finished, not dropped
        assert s.proc.wait(timeout=15) == 0 and time.monotonic() - t0 < 15
    with pytest.raises(httpx.TransportError):
        httpx.get(s.url + "/health", timeout=2)  # and it no longer listens


def test_health_is_503_until_loaded(build):
    from starlette.testclient import TestClient

    from mfdeploy.server import ServeConfig, ServerState, make_app

    state = ServerState(ServeConfig(build_dir=build).validate())
    client = TestClient(make_app(state))  # not entered: the app never started, the towers never loaded
    resp = client.get("/health")
    assert resp.status_code == 503 and resp.json()["status"] == "loading"
    resp = client.post("/v1/embeddings", json={"input": "x"})
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    with TestClient(make_app(ServerState(ServeConfig(build_dir=build).validate()))) as started:
        deadline = time.monotonic() + 60
        while started.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert embeddings(started.post("/v1/embeddings", json={"input": "x"})).shape[0] == 1


@pytest.mark.parametrize("args,message", [
    (["--max-batch", "0"], "--max-batch 0: must be 1 or more"),
    (["--backend", "onnx"], "--backend onnx: choose one of"),
    (["--max-queue", "4", "--max-items", "8"], "--max-queue 4 is below --max-items 8"),
    (["--backend", "ort-int8"], "onnx_int8/"),
])
def test_bad_settings_fail_in_one_line(build, args, message):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "mfdeploy.cli", "serve", str(build), "--port", "0", *args],
                          capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_a_build(tmp_path):
    from mfdeploy.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path / "missing")])
    assert e.value.code == 2


def test_the_openai_client_of_the_readme_works(server):
    """docs/guides/serve.md's Python example, as written: the OpenAI SDK (base64 by default) for texts and images."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    texts = client.embeddings.create(model="mfdeploy", input=["a red circle", "a blue square"])
    image = image_uri(20_000_005)
    images = client.embeddings.create(model="mfdeploy", input=[image], extra_body={"modality": "image"})
    assert len(texts.data) == 2 and len(images.data) == 1
    direct = embeddings(server.post("/v1/embeddings", {"input": ["a red circle", "a blue square"]}))
    assert np.allclose(np.array([d.embedding for d in texts.data]), direct, atol=1e-6)
    want = embeddings(server.post("/v1/embeddings", {"input": [image], "modality": "image"}))[0]
    assert np.allclose(images.data[0].embedding, want, atol=1e-6)


@pytest.mark.parametrize("method,path,status,message", [
    ("GET", "/v1/embedding", 404, "no route /v1/embedding: the routes are POST /v1/embeddings"),
    ("GET", "/v1/embeddings", 405, "GET is not allowed on /v1/embeddings: the routes are"),
    ("POST", "/v1/embeddings/", 404, "no route /v1/embeddings/: the routes are POST /v1/embeddings"),  # was a 307
])
def test_an_unknown_route_or_method_is_answered_in_the_error_shape(server, method, path, status, message):
    """Starlette answered these in plain text ("Not Found"), unlike every other error of the API."""
    resp = server.client.request(method, path)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["message"].startswith(message) and error["code"] == status, error
    if status == 405:
        assert resp.headers["allow"] == "POST"


def test_health_says_what_each_tower_runs_in(server):
    body = server.client.get("/health").json()
    assert body["status"] == "ok" and body["precision"] == {"vision": "f32", "text": "f32"}, body  # as bench says
