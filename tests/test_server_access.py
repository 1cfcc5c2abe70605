"""Who may call `mfdeploy serve`, and for how long (issue 31, Security): `--api-key` (or MFDEPLOY_API_KEY)
guards every route but /health and /metrics with a 401 in OpenAI's error shape; `--request-timeout` answers a
request that a stuck model call holds with 504; listening beyond loopback without a key is warned about.

The app runs in this process (Starlette's TestClient) over a fake runner, so a model call can be made to hang.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_build, run_cli
from starlette.testclient import TestClient

from mfdeploy.errors import UserError
from mfdeploy.server import ServeConfig, ServerState, make_app
from mfdeploy.server.preprocess import Preprocessor

KEY = "sk-test-0123456789"


class FakeRunner:
    """Unit embeddings of width 16; `gate` (when set) holds every call until it is released."""

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate

    def _rows(self, n: int) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait()
        rows = np.ones((n, 16), dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_texts(self, ids, mask):
        return self._rows(len(ids))

    def embed_images(self, pixels):
        return self._rows(len(pixels))

    def close(self):
        pass


class FakeState(ServerState):
    """The server's state with the checkpoint's real preprocessing and a fake runner."""

    def __init__(self, cfg: ServeConfig, checkpoint: Path, runner: FakeRunner):
        super().__init__(cfg)
        self.checkpoint, self.fake = checkpoint, runner

    def load(self) -> None:
        self.pre, self.runner = Preprocessor(self.checkpoint), self.fake
        self.model_name, self.embed_dim = "fake", 16


def client(state: ServerState) -> TestClient:
    c = TestClient(make_app(state)).__enter__()
    deadline = time.monotonic() + 60
    while c.get("/health").status_code != 200:
        assert time.monotonic() < deadline, c.get("/health").text
        time.sleep(0.02)
    return c


@pytest.fixture()
def guarded(tiny_clip_dir, tmp_path):
    c = client(FakeState(ServeConfig(build_dir=tmp_path, api_key=KEY).validate(), tiny_clip_dir, FakeRunner()))
    yield c
    c.__exit__(None, None, None)


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": KEY},
                                     {"authorization": f"Basic {KEY}"}, {"authorization": f"Bearer {KEY}x"},
                                     {"authorization": f"Bearer {KEY[:-1]}"}])
def test_without_the_key_every_model_route_is_401(guarded, headers):
    for path, body in (("/v1/embeddings", {"input": "a red circle"}),
                       ("/v1/classify", {"image": "x", "labels": ["a"]}), ("/v1/models", {})):
        resp = guarded.post(path, json=body, headers=headers)
        assert resp.status_code == 401, (path, resp.text)
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == 401
        assert "API key" in error["message"] and "\n" not in error["message"] and KEY not in resp.text
        assert resp.headers["www-authenticate"] == "Bearer"


def test_with_the_key_it_serves_and_health_and_metrics_need_none(guarded):
    for scheme in ("Bearer", "bearer"):
        resp = guarded.post("/v1/embeddings", json={"input": "a red circle"}, headers={"authorization":
                                                                                        f"{scheme} {KEY}"})
        assert resp.status_code == 200, resp.text
    assert guarded.get("/health").status_code == 200
    guarded.post("/v1/embeddings", json={"input": "x"})
    metrics = guarded.get("/metrics")
    assert metrics.status_code == 200
    assert 'mfdeploy_requests_total{endpoint="/v1/embeddings",status="401"} 1.0' in metrics.text  # logged too


def test_the_key_is_compared_in_constant_time(guarded, monkeypatch):
    import hmac

    from mfdeploy.server import middleware

    calls, real = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    assert guarded.post("/v1/embeddings", json={"input": "x"}, headers={"authorization": "Bearer nope"}).status_code \
        == 401
    assert calls == [(b"nope", KEY.encode())]


def test_the_openai_client_sends_the_key(guarded):
    from openai import AuthenticationError, OpenAI

    ok = OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=guarded)
    assert len(ok.embeddings.create(model="m", input=["a", "b"]).data) == 2
    with pytest.raises(AuthenticationError):
        OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=guarded,
               max_retries=0).embeddings.create(model="m", input=["a"])


def test_api_key_from_the_environment_and_bad_keys(monkeypatch, tmp_path, capsys):
    import mfdeploy.server

    seen = []
    monkeypatch.setattr(mfdeploy.server, "serve", lambda cfg, on_listen=None: seen.append(cfg))
    monkeypatch.setenv("MFDEPLOY_API_KEY", KEY)
    assert run_cli(["serve", str(tmp_path)]) == 0 and seen[-1].api_key == KEY
    assert run_cli(["serve", str(tmp_path), "--api-key", "other"]) == 0 and seen[-1].api_key == "other"
    monkeypatch.delenv("MFDEPLOY_API_KEY")
    assert run_cli(["serve", str(tmp_path)]) == 0 and seen[-1].api_key is None
    for bad in ("two words", "é", ""):
        with pytest.raises(Exception, match="--api-key"):
            ServeConfig(build_dir=tmp_path, api_key=bad).validate()


def test_a_stuck_model_call_is_answered_504_and_the_server_serves_on(tiny_clip_dir, tmp_path):
    gate = threading.Event()
    cfg = ServeConfig(build_dir=tmp_path, request_timeout_s=0.5, max_delay_ms=0).validate()
    c = client(FakeState(cfg, tiny_clip_dir, FakeRunner(gate)))
    try:
        t0 = time.monotonic()
        resp = c.post("/v1/embeddings", json={"input": "a red circle"})
        assert resp.status_code == 504 and time.monotonic() - t0 < 3, resp.text
        error = resp.json()["error"]
        assert error["code"] == 504 and "--request-timeout" in error["message"] and error["type"] == "timeout"
        assert c.get("/health").status_code == 200
        gate.set()  # the model call comes back: the next request is served
        assert c.post("/v1/embeddings", json={"input": "a red circle"}).status_code == 200
    finally:
        gate.set()
        c.__exit__(None, None, None)
    with pytest.raises(Exception, match="--request-timeout"):
        ServeConfig(build_dir=tmp_path, request_timeout_s=-1).validate()
    # a batching delay as long as the time limit: every lone request would be answered 504
    with pytest.raises(UserError, match=r"^--max-delay-ms 3000 is not below --request-timeout 0\.3 s: a lone "):
        ServeConfig(build_dir=tmp_path, request_timeout_s=0.3, max_delay_ms=3000).validate()
    ServeConfig(build_dir=tmp_path, request_timeout_s=None, max_delay_ms=3000).validate()  # no limit: fine


@pytest.fixture(scope="module")
def build(tiny_clip_dir, tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("access") / "build", tiny_clip_dir, onnx_dense=False)


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("host,key,warned", [("0.0.0.0", None, True), ("192.168.1.5", None, True),
                                             ("myhost.example", None, True), ("0.0.0.0", KEY, False),
                                             ("127.0.0.1", None, False), ("::1", None, False),
                                             ("localhost", None, False)])
def test_listening_beyond_loopback_without_a_key_is_warned_about(build, monkeypatch, host, key, warned):
    from mfdeploy.server import run

    monkeypatch.setattr(run._Server, "run", lambda self, sockets=None: None)  # everything but the socket
    monkeypatch.setattr(run, "_listen", lambda host, port: socket.socket())  # and the address is not bound
    lines = Lines()
    logger = logging.getLogger("mfdeploy.server")
    logger.addHandler(lines)
    try:
        run.serve(ServeConfig(build_dir=build, host=host, api_key=key))
    finally:
        logger.removeHandler(lines)
    warnings = [line for line in lines.lines if "without an API key" in line]
    assert len(warnings) == (1 if warned else 0), lines.lines
    if warned:
        assert host in warnings[0] and "--api-key" in warnings[0] and "\n" not in warnings[0]
