"""The HTTP app: `/health`, `/v1/embeddings` (OpenAI format), `/v1/classify`, `/metrics`, on Starlette.

Starlette (under uvicorn) rather than FastAPI: four routes need no schema
framework, and its three small dependencies (starlette, anyio, uvicorn) suit
the edge boxes this serves from; errors are written by hand so that every one
is one line saying which field is wrong, in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
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
from mfdeploy.server.protocol import (
    RETRY_AFTER_S,
    ROUTES,
    ApiError,
    json_body,
    no_token_ids,
    require,
    routing_error,
    stopping,
    strings,
    truncate_option,
    while_connected,
)
from mfdeploy.server.state import ServerState

log = logging.getLogger("mfdeploy.server")
MODALITIES = ("text", "image")
ENCODINGS = ("float", "base64")


async def _submit(state: ServerState, tower: str, items: list) -> tuple[np.ndarray, np.ndarray]:
    try:
        return await state.batchers[tower].submit(items)
    except QueueFull as e:
        raise ApiError(503, f"{e}: retry shortly", kind="server_overloaded",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except ShuttingDown as e:
        raise stopping(str(e)) from None


async def _images(state: ServerState, budget: PixelBudget, values: list[str], field: str, gone: threading.Event,
                  single: bool = False) -> list[np.ndarray]:
    """The request's images -> `[3, H, W]` pixel values each; sizes checked from the headers first (413).

    Once `gone` is set (the client left), the pictures not decoded yet are not decoded."""
    cfg = state.cfg
    names = [field] if single else [f"{field}[{i}]" for i in range(len(values))]

    def pixels(picture: Any) -> np.ndarray:
        if gone.is_set():
            raise ClientDisconnect()
        return state.image_pixels(picture)

    def decode() -> list[np.ndarray]:
        return request_images(values, names, cfg.max_image_pixels, cfg.max_request_pixels, pixels, budget,
                              state.pre.resized_pixels)

    try:  # decoding is CPU work: off the event loop, on as many threads as there are cores (`state.decoders`)
        return await anyio.to_thread.run_sync(decode, limiter=state.decoders)
    except TooLarge as e:
        raise ApiError(413, str(e), field) from None
    except BadInput as e:
        raise ApiError(400, str(e), field) from None


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


def make_app(state: ServerState) -> Starlette:
    """The Starlette app over `state` (which loads the towers when the app starts)."""
    cfg = state.cfg
    budget = PixelBudget(2 * cfg.max_image_pixels)  # full-size pictures held at once, server-wide (decoding.py)

    started = int(time.time())  # /v1/models' "created": when this server started (OpenAI's field is a Unix time)

    def endpoint(fn: Callable) -> Callable:
        async def handler(request: Request) -> Response:
            if state.draining:
                return stopping().response()
            if not state.ready:
                reason = state.error or "the towers are still loading"
                return ApiError(503, reason, kind="not_ready", headers={"Retry-After": str(RETRY_AFTER_S)}).response()
            try:
                return await state.in_time(fn(request), cfg.request_timeout_s)
            except asyncio.TimeoutError:
                return ApiError(504, f"the request took longer than {cfg.request_timeout_s:g} s "
                                "(--request-timeout)", kind="timeout").response()
            except ShuttingDown as e:
                return stopping(str(e)).response()
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
        body = await json_body(request, cfg.max_body_bytes)
        gone = threading.Event()
        return await while_connected(request, embed(body, gone), gone)

    async def embed(body: dict, gone: threading.Event) -> Response:
        modality = body.get("modality")
        modality = "text" if modality is None else modality  # null is the default, as for every other field
        if modality not in MODALITIES:
            raise ApiError(400, f"unknown modality {modality!r}: expected 'text' or 'image'", "modality")
        encoding = body.get("encoding_format", "float")
        encoding = "float" if encoding is None else encoding
        if encoding not in ENCODINGS:
            raise ApiError(400, f"encoding_format {encoding!r}: expected 'float' or 'base64'", "encoding_format")
        dims = body.get("dimensions")
        if dims is not None and dims != state.embed_dim:
            raise ApiError(400, f"dimensions {dims!r}: this model's embeddings have {state.embed_dim}", "dimensions")
        raw = require(body, "input")
        no_token_ids(raw, "input")
        values = strings(raw, "input", cfg.max_items)
        truncate = truncate_option(body, cfg.truncate)
        if modality == "image":
            rows, _ = await _submit(state, "vision", await _images(state, budget, values, "input", gone))
            usage = {"prompt_tokens": 0, "total_tokens": 0, "images": len(values)}
        else:
            names = ["'input'"] if isinstance(raw, str) else [f"'input[{i}]'" for i in range(len(values))]
            for name, value in zip(names, values):
                if value[:11].lower() == "data:image/":  # would be embedded as the text of its base64
                    raise ApiError(400, f"{name} is an image data URI, and 'modality' is 'text' (the default): send "
                                   "\"modality\": \"image\" to embed images", "modality")
            if not truncate:
                await _check_lengths(state, values, names, "input")
            rows, tokens = await _submit(state, "text", values)
            usage = {"prompt_tokens": int(tokens.sum()), "total_tokens": int(tokens.sum())}
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode() if encoding == "base64"
                 else row.tolist()} for i, row in enumerate(rows)]
        return JSONResponse({"object": "list", "data": data, "model": state.model_name, "usage": usage})

    @endpoint
    async def classify(request: Request) -> Response:
        body = await json_body(request, cfg.max_body_bytes)
        gone = threading.Event()
        return await while_connected(request, scores(body, gone), gone)

    async def scores(body: dict, gone: threading.Event) -> Response:
        labels = strings(require(body, "labels"), "labels", cfg.max_items, one_allowed=False)
        template = body.get("template")
        template = "{}" if template is None else template
        if template_problem(template):
            raise ApiError(400, "'template' must be a string with one '{}' where the label goes, "
                           "e.g. 'a photo of a {}.'", "template")
        image = require(body, "image")
        prompts = [fill_template(template, x) for x in labels]
        if not truncate_option(body, cfg.truncate):
            await _check_lengths(state, prompts, [f"the prompt of 'labels[{i}]'" for i in range(len(labels))],
                                 "labels")
        (img,) = await _images(state, budget, [image], "image", gone, single=True)
        (img_row, _), (txt_rows, _) = await asyncio.gather(_submit(state, "vision", [img]),
                                                           _submit(state, "text", prompts))
        # the family's scoring: one softmax over the labels (CLIP), or an independent sigmoid per label (SigLIP)
        probs = state.pre.scores(img_row[0], txt_rows)  # [labels]
        return JSONResponse({"labels": labels, "scores": probs.tolist(), "label": labels[int(probs.argmax())],
                             "scoring": state.pre.family.scoring,
                             "model": state.model_name})

    def model_object() -> dict:
        return {"id": state.model_name, "object": "model", "created": started, "owned_by": "mfdeploy"}

    @endpoint
    async def models(request: Request) -> Response:  # OpenAI's model list: clients that look the model up first
        return JSONResponse({"object": "list", "data": [model_object()]})

    @endpoint
    async def model(request: Request) -> Response:  # OpenAI's models.retrieve(id): the one served, or a 404
        name = request.path_params["model"]
        if name != state.model_name:
            raise ApiError(404, f"model {name!r} is not served here: this server serves {state.model_name!r} "
                           "(GET /v1/models lists it)", "model", kind="model_not_found")
        return JSONResponse(model_object())

    async def health(request: Request) -> Response:
        status = "stopping" if state.draining else "ok" if state.ready else "error" if state.error else "loading"
        body: dict[str, Any] = {"status": status, "backend": cfg.backend, "build": str(cfg.build_dir),
                                "model": state.model_name}
        precision = getattr(state.runner, "tower_precision", None)  # a runner that cannot say: left out, never a 500
        if callable(precision):  # what each tower runs in (e.g. bf16 on OpenVINO's auto), as bench reports it
            body["precision"] = {t: precision(t) for t in ("vision", "text")}
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

    handlers = {"/v1/embeddings": embeddings, "/v1/classify": classify, "/v1/models": models,
                "/v1/models/{model:path}": model, "/health": health, "/metrics": metrics}
    routes = [Route(path, handlers[path], methods=[method]) for method, path in ROUTES]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: routing_error})
    # `/v1/embeddings/` got a bodiless 307 to the path without the slash (which a POST client may not follow):
    # a 404 in the error shape, naming the routes, says what to send instead
    app.router.redirect_slashes = False
    if cfg.api_key is not None:
        app.add_middleware(ApiKeyAuth, key=cfg.api_key, reject=lambda: ApiError(
            401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the server's key "
            "(--api-key)", kind="invalid_request_error", headers={"WWW-Authenticate": "Bearer"}).response())
    app.add_middleware(AccessLog, state=state)  # added last: outermost, so refused requests are logged too
    return app


__all__ = ["ApiError", "make_app"]
