"""The HTTP app: `/health`, `/v1/embeddings` (OpenAI format), `/v1/classify`, `/metrics`, on Starlette.

Starlette (under uvicorn) rather than FastAPI: four routes need no schema
framework, and its three small dependencies (starlette, anyio, uvicorn) suit
the edge boxes this serves from; errors are written by hand so that every one
is one line saying which field is wrong, in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mfdeploy.server.batcher import QueueFull
from mfdeploy.server.preprocess import BadInput, decode_image
from mfdeploy.server.state import ServerState

log = logging.getLogger("mfdeploy.server")
MODALITIES = ("text", "image")
ENCODINGS = ("float", "base64")
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An error answer: HTTP status, one-line message, OpenAI error type, the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


async def _json_body(request: Request, limit: int) -> dict:
    """The request's JSON object, read up to `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} (--max-body-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _strings(value: Any, field: str, limit: int, one_allowed: bool = True) -> list[str]:
    """A non-empty list of non-empty strings (or one string, when allowed), at most `limit` long."""
    if isinstance(value, str) and one_allowed:
        value = [value]
    if not isinstance(value, list):
        raise ApiError(400, f"'{field}' must be a string or a list of strings" if one_allowed
                       else f"'{field}' must be a list of strings", field)
    if not value:
        raise ApiError(400, f"'{field}' is an empty list: give at least one item", field)
    if len(value) > limit:
        raise ApiError(413, f"'{field}' has {len(value)} items, more than the limit of {limit} (--max-items)", field)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ApiError(400, f"'{field}[{i}]' must be a non-empty string", field)
    return value


async def _submit(state: ServerState, tower: str, items: list) -> tuple[np.ndarray, np.ndarray]:
    try:
        return await state.batchers[tower].submit(items)
    except QueueFull as e:
        raise ApiError(503, f"{e}: retry shortly", kind="server_overloaded",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None


async def _images(values: list[str], field: str, single: bool = False) -> list:
    def decode() -> list:
        return [decode_image(v, field if single else f"{field}[{i}]") for i, v in enumerate(values)]

    try:
        return await run_in_threadpool(decode)  # decoding is CPU work: off the event loop
    except BadInput as e:
        raise ApiError(400, str(e), field) from None


def _require(body: dict, field: str) -> Any:
    if field not in body:
        raise ApiError(400, f"missing field '{field}'", field)
    return body[field]


def make_app(state: ServerState) -> Starlette:
    """The Starlette app over `state` (which loads the towers when the app starts)."""
    cfg = state.cfg

    def endpoint(fn: Callable) -> Callable:
        async def handler(request: Request) -> Response:
            if not state.ready:
                reason = state.error or "the towers are still loading"
                return ApiError(503, reason, kind="not_ready", headers={"Retry-After": str(RETRY_AFTER_S)}).response()
            try:
                return await fn(request)
            except ApiError as e:
                return e.response()
            except ClientDisconnect:
                return Response(status_code=499)
            except Exception as e:  # noqa: BLE001 - a model failure: a JSON 500, and the server serves on
                log.exception("%s failed", request.url.path)
                return ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error").response()
        return handler

    @endpoint
    async def embeddings(request: Request) -> Response:
        body = await _json_body(request, cfg.max_body_bytes)
        modality = body.get("modality", "text")
        if modality not in MODALITIES:
            raise ApiError(400, f"unknown modality {modality!r}: expected 'text' or 'image'", "modality")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ENCODINGS:
            raise ApiError(400, f"encoding_format {encoding!r}: expected 'float' or 'base64'", "encoding_format")
        dims = body.get("dimensions")
        if dims is not None and dims != state.embed_dim:
            raise ApiError(400, f"dimensions {dims!r}: this model's embeddings have {state.embed_dim}", "dimensions")
        values = _strings(_require(body, "input"), "input", cfg.max_items)
        if modality == "image":
            rows, _ = await _submit(state, "vision", await _images(values, "input"))
            usage = {"prompt_tokens": 0, "total_tokens": 0, "images": len(values)}
        else:
            rows, tokens = await _submit(state, "text", values)
            usage = {"prompt_tokens": int(tokens.sum()), "total_tokens": int(tokens.sum())}
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode() if encoding == "base64"
                 else row.tolist()} for i, row in enumerate(rows)]
        return JSONResponse({"object": "list", "data": data, "model": state.model_name, "usage": usage})

    @endpoint
    async def classify(request: Request) -> Response:
        body = await _json_body(request, cfg.max_body_bytes)
        labels = _strings(_require(body, "labels"), "labels", cfg.max_items, one_allowed=False)
        template = body.get("template") or "{}"
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ApiError(400, "'template' must be a string with one '{}' where the label goes, "
                           "e.g. 'a photo of a {}.'", "template")
        image = _require(body, "image")
        (img,) = await _images([image], "image", single=True)
        (img_row, _), (txt_rows, _) = await asyncio.gather(_submit(state, "vision", [img]),
                                                 _submit(state, "text", [template.format(x) for x in labels]))
        logits = state.pre.logit_scale * (txt_rows @ img_row[0])  # [labels], embeddings are L2-normalised
        scores = np.exp(logits - logits.max())
        scores /= scores.sum()
        return JSONResponse({"labels": labels, "scores": scores.tolist(), "label": labels[int(scores.argmax())],
                             "model": state.model_name})

    async def health(request: Request) -> Response:
        body = {"status": "ok" if state.ready else ("error" if state.error else "loading"),
                "backend": cfg.backend, "build": str(cfg.build_dir), "model": state.model_name}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    routes = [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
              Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/v1/classify", classify, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(AccessLog, state=state)
    return app


class AccessLog:
    """ASGI middleware: one log line and the request metrics for every HTTP request."""

    KNOWN = ("/health", "/metrics", "/v1/embeddings", "/v1/classify")

    def __init__(self, app: Any, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        t0, status = loop.time(), [500]

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            seconds = loop.time() - t0
            path = scope["path"] if scope["path"] in self.KNOWN else "other"
            m = self.state.metrics
            m.requests.labels(path, str(status[0])).inc()
            m.latency.labels(path).observe(seconds)
            if status[0] >= 400:
                m.errors.labels(path, "client" if status[0] < 500 else "server").inc()
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0], 1000 * seconds)


__all__ = ["ApiError", "make_app"]
