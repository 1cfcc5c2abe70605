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
import re
import sys
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mfdeploy.data.pairs import fill_template, template_problem
from mfdeploy.server.batcher import QueueFull, ShuttingDown
from mfdeploy.server.decoding import PixelBudget, request_images
from mfdeploy.server.middleware import AccessLog, ApiKeyAuth
from mfdeploy.server.preprocess import BadInput, TooLarge
from mfdeploy.server.state import ServerState

SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a UTF-16 surrogate written as a JSON escape
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
    """The request's JSON object, read up to `limit` bytes; the body must be declared `application/json`."""
    declared_type = request.headers.get("content-type")
    if declared_type is None or declared_type.split(";")[0].strip().lower() != "application/json":
        shown = "no Content-Type" if declared_type is None else f"Content-Type {declared_type.split(';')[0]!r}"
        raise ApiError(415, f"{shown}: send the body as JSON with 'Content-Type: application/json'")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} (--max-body-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to be a request") from None
    except ValueError:  # an integer of more digits than Python converts to int (sys.get_int_max_str_digits)
        raise ApiError(400, f"request body holds a number of over {sys.get_int_max_str_digits()} digits: not a "
                       "request") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:  # JSON may escape half a UTF-16 pair ("\ud800"): no text, and no tokenizer takes it
        if SURROGATE_ESCAPE.search(raw):  # only then is the body encoded again (base64 images never are)
            json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "request body holds a lone UTF-16 surrogate escape (e.g. \\ud800): not Unicode "
                       "text") from None
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
    except ShuttingDown as e:
        raise _stopping(str(e)) from None


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (an unknown path, a wrong method) in OpenAI's error shape, as every other error."""
    assert isinstance(exc, HTTPException)
    paths = "POST /v1/embeddings, POST /v1/classify, GET /health, GET /metrics"
    what = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    message = f"{what.get(exc.status_code, exc.detail)}: the routes are {paths}"
    return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()


def _stopping(message: str = "the server is shutting down") -> ApiError:
    """503 for a request the stopping server will not answer: retry (on another replica, or after the restart)."""
    return ApiError(503, f"{message}: retry", kind="server_shutting_down", headers={"Retry-After": str(RETRY_AFTER_S)})


async def _images(state: ServerState, budget: PixelBudget, values: list[str], field: str,
                  single: bool = False) -> list[np.ndarray]:
    """The request's images -> `[3, H, W]` pixel values each; sizes checked from the headers first (413)."""
    cfg = state.cfg
    names = [field] if single else [f"{field}[{i}]" for i in range(len(values))]

    def decode() -> list[np.ndarray]:
        return request_images(values, names, cfg.max_image_pixels, cfg.max_request_pixels, state.image_pixels,
                              budget)

    try:  # decoding is CPU work: off the event loop, on as many threads as there are cores (`state.decoders`)
        return await anyio.to_thread.run_sync(decode, limiter=state.decoders)
    except TooLarge as e:
        raise ApiError(413, str(e), field) from None
    except BadInput as e:
        raise ApiError(400, str(e), field) from None


def _truncate(body: dict, default: bool) -> bool:
    """The request's `truncate` (a JSON boolean), else the server's --truncate."""
    value = body.get("truncate")
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'truncate' must be true or false, not {json.dumps(value)[:40]}", "truncate")
    return value


async def _check_lengths(state: ServerState, texts: list[str], names: list[str], field: str) -> None:
    """400 naming the first text longer than the model's text length (tokenizing would cut it).

    Args:
        state: the server (its tokenizer and text length).
        texts: the texts the model would embed.
        names: how the error names each text (e.g. `'input[2]'`).
        field: the request field they come from (the error's `param`).
    """
    counts = await run_in_threadpool(state.pre.token_counts, texts)  # a long text takes a while: off the loop
    limit = state.pre.max_text_len
    for name, n in zip(names, counts):
        if n > limit:
            raise ApiError(400, f"{name} is {n} tokens, over this model's limit of {limit} tokens: shorten it, "
                           "or send \"truncate\": true to embed its first tokens", field)


def _require(body: dict, field: str) -> Any:
    if field not in body:
        raise ApiError(400, f"missing field '{field}'", field)
    return body[field]


def make_app(state: ServerState) -> Starlette:
    """The Starlette app over `state` (which loads the towers when the app starts)."""
    cfg = state.cfg
    budget = PixelBudget(2 * cfg.max_image_pixels)  # full-size pictures held at once, server-wide (decoding.py)

    def endpoint(fn: Callable) -> Callable:
        async def handler(request: Request) -> Response:
            if state.draining:
                return _stopping().response()
            if not state.ready:
                reason = state.error or "the towers are still loading"
                return ApiError(503, reason, kind="not_ready", headers={"Retry-After": str(RETRY_AFTER_S)}).response()
            try:
                return await state.in_time(fn(request), cfg.request_timeout_s)
            except asyncio.TimeoutError:
                return ApiError(504, f"the request took longer than {cfg.request_timeout_s:g} s "
                                "(--request-timeout)", kind="timeout").response()
            except ShuttingDown as e:
                return _stopping(str(e)).response()
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
        encoding = body.get("encoding_format", "float")
        encoding = "float" if encoding is None else encoding
        if encoding not in ENCODINGS:
            raise ApiError(400, f"encoding_format {encoding!r}: expected 'float' or 'base64'", "encoding_format")
        dims = body.get("dimensions")
        if dims is not None and dims != state.embed_dim:
            raise ApiError(400, f"dimensions {dims!r}: this model's embeddings have {state.embed_dim}", "dimensions")
        raw = _require(body, "input")
        values = _strings(raw, "input", cfg.max_items)
        truncate = _truncate(body, cfg.truncate)
        if modality == "image":
            rows, _ = await _submit(state, "vision", await _images(state, budget, values, "input"))
            usage = {"prompt_tokens": 0, "total_tokens": 0, "images": len(values)}
        else:
            if not truncate:
                names = ["'input'"] if isinstance(raw, str) else [f"'input[{i}]'" for i in range(len(values))]
                await _check_lengths(state, values, names, "input")
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
        template = body.get("template")
        template = "{}" if template is None else template
        if template_problem(template):
            raise ApiError(400, "'template' must be a string with one '{}' where the label goes, "
                           "e.g. 'a photo of a {}.'", "template")
        image = _require(body, "image")
        prompts = [fill_template(template, x) for x in labels]
        if not _truncate(body, cfg.truncate):
            await _check_lengths(state, prompts, [f"the prompt of 'labels[{i}]'" for i in range(len(labels))],
                                 "labels")
        (img,) = await _images(state, budget, [image], "image", single=True)
        (img_row, _), (txt_rows, _) = await asyncio.gather(_submit(state, "vision", [img]),
                                                           _submit(state, "text", prompts))
        # the family's scoring: one softmax over the labels (CLIP), or an independent sigmoid per label (SigLIP)
        scores = state.pre.scores(img_row[0], txt_rows)  # [labels]
        return JSONResponse({"labels": labels, "scores": scores.tolist(), "label": labels[int(scores.argmax())],
                             "scoring": state.pre.family.scoring,
                             "model": state.model_name})

    async def health(request: Request) -> Response:
        status = "stopping" if state.draining else "ok" if state.ready else "error" if state.error else "loading"
        body = {"status": status, "backend": cfg.backend, "build": str(cfg.build_dir), "model": state.model_name}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

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
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _routing_error})
    if cfg.api_key is not None:
        app.add_middleware(ApiKeyAuth, key=cfg.api_key, reject=lambda: ApiError(
            401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the server's key "
            "(--api-key)", kind="invalid_request_error", headers={"WWW-Authenticate": "Bearer"}).response())
    app.add_middleware(AccessLog, state=state)  # added last: outermost, so refused requests are logged too
    return app


__all__ = ["ApiError", "make_app"]
