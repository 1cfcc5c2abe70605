"""The HTTP API's request side: a JSON body read within its limits, the fields checked, a client that left
noticed, and every error as one line in OpenAI's error shape (`ApiError`)."""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from mfdeploy.errors import is_whole
from mfdeploy.server.batcher import first_of

SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a UTF-16 surrogate written as a JSON escape
RETRY_AFTER_S = 1
T = TypeVar("T")


class ApiError(Exception):
    """An error answer: HTTP status, one-line message, OpenAI error type, the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


async def json_body(request: Request, limit: int) -> dict:
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


def strings(value: Any, field: str, limit: int, one_allowed: bool = True) -> list[str]:
    """A non-empty list of non-empty strings (or one string, when allowed), at most `limit` long."""
    if isinstance(value, str) and one_allowed:
        if not value:  # named as sent: one string, not an item of a list the client never sent
            raise ApiError(400, f"'{field}' is an empty string: give the text (or image) to embed", field)
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


# every route, in the order a 404 lists them: the app routes them, the access log counts them by name
ROUTES = (("POST", "/v1/embeddings"), ("POST", "/v1/classify"), ("GET", "/v1/models"),
          ("GET", "/v1/models/{model:path}"), ("GET", "/health"), ("GET", "/metrics"))


def route_name(path: str) -> str | None:
    """The route `path` belongs to, as logged, counted and listed (`/v1/models/{model}`), or None: no route."""
    for _method, route in ROUTES:
        prefix, brace, _ = route.partition("{")
        if path == route if not brace else (path.startswith(prefix) and len(path) > len(prefix)):
            return route.replace(":path", "")
    return None


def no_token_ids(value: Any, field: str) -> None:
    """Refuse OpenAI's other input shape, token ids (`[1, 2]`, `[[1, 2]]`; LangChain's OpenAIEmbeddings sends them
    by default): they are ids of OpenAI's tokenizer, and this server tokenizes texts with the model's own."""
    if isinstance(value, list) and value and all(is_whole(x) or (isinstance(x, list) and x and all(map(is_whole, x)))
                                                 for x in value):
        raise ApiError(400, f"'{field}' holds token ids: send the texts themselves, which the server tokenizes with "
                       "the model's tokenizer (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))", field)


async def _until_disconnect(request: Request) -> None:
    """Returns once the client has gone. Only after the body was read: each `receive` would take a body chunk."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def while_connected(request: Request, work: Awaitable[T], gone: threading.Event) -> T:
    """`work`'s result, unless the client goes first: then `work` is cancelled (its queued items are skipped by
    the batcher, its pictures not decoded yet are not decoded: `gone` is set) and `ClientDisconnect` (a 499 in
    the log and the metrics) is raised at once."""
    finished, result, _ = await first_of(work, _until_disconnect(request))
    if finished:
        return result
    gone.set()
    raise ClientDisconnect()


async def routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (an unknown path, a wrong method) in OpenAI's error shape, as every other error."""
    assert isinstance(exc, HTTPException)
    paths = ", ".join(f"{method} {path.replace(':path', '')}" for method, path in ROUTES)
    what = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    message = f"{what.get(exc.status_code, exc.detail)}: the routes are {paths}"
    return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()


def stopping(message: str = "the server is shutting down") -> ApiError:
    """503 for a request the stopping server will not answer: retry (on another replica, or after the restart)."""
    return ApiError(503, f"{message}: retry", kind="server_shutting_down", headers={"Retry-After": str(RETRY_AFTER_S)})


def truncate_option(body: dict, default: bool) -> bool:
    """The request's `truncate` (a JSON boolean), else the server's --truncate."""
    value = body.get("truncate")
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'truncate' must be true or false, not {json.dumps(value)[:40]}", "truncate")
    return value


def require(body: dict, field: str) -> Any:
    if field not in body:
        raise ApiError(400, f"missing field '{field}'", field)
    return body[field]


__all__ = ["RETRY_AFTER_S", "ROUTES", "ApiError", "json_body", "no_token_ids", "require", "route_name", "routing_error",
           "stopping",
           "strings", "truncate_option", "while_connected"]
