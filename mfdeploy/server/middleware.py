"""ASGI middleware of the server: the API key check, and one access-log line plus metrics per request."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from mfdeploy.server.protocol import route_name
from mfdeploy.server.state import ServerState

log = logging.getLogger("mfdeploy.server")
PATH_SAFE = "/:@!$&'()*+,;=~{}"  # printed as they are in a logged path; quote() keeps letters, digits and _.-
OPEN_PATHS = ("/health", "/metrics")  # probes and scrapers carry no key (as in vLLM and text-embeddings-inference)


class ApiKeyAuth:
    """Every HTTP request but those to `open_paths` needs `Authorization: Bearer KEY`; others get `reject()`.

    The key is compared with `hmac.compare_digest`, whose time does not depend on where the strings differ,
    so a client cannot find the key one character at a time by timing the 401s.
    """

    def __init__(self, app: Any, key: str, reject: Callable[[], Response], open_paths: tuple[str, ...] = OPEN_PATHS):
        self.app, self.key, self.reject, self.open_paths = app, key.encode("ascii"), reject, open_paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope["headers"]):
            await self.app(scope, receive, send)
            return
        await self.reject()(scope, receive, send)

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        values = [value for name, value in headers if name.lower() == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


class AccessLog:
    """ASGI middleware: one log line and the request metrics for every HTTP request."""

    def __init__(self, app: Any, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]  # uvloop's loop.time() counts whole milliseconds

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            seconds = time.perf_counter() - t0
            path = route_name(scope["path"]) or "other"
            m = self.state.metrics
            m.requests.labels(path, str(status[0])).inc()
            m.latency.labels(path).observe(seconds)
            if status[0] >= 400:
                m.errors.labels(path, "client" if status[0] < 500 else "server").inc()
            # the path as sent, percent-encoded again (as uvicorn's access log has it): ASGI decodes it, and a
            # client's `%0A` would otherwise start a forged log line
            log.info("%s %s %d %.1f ms", scope["method"], quote(scope["path"], safe=PATH_SAFE), status[0],
                     1000 * seconds)


__all__ = ["OPEN_PATHS", "AccessLog", "ApiKeyAuth"]
