"""A time limit on a request's headers, which uvicorn has no setting for (slowloris).

uvicorn closes a keep-alive connection left idle (`timeout_keep_alive`), but not one that opens and then sends
its headers a byte at a time, nor one that does so after a response (any byte received cancels the keep-alive
timer): a few hundred such clients hold as many connections, and file descriptors, for as long as they like.
This is uvicorn's httptools protocol (the one it picks itself: httptools is a dependency) with one timer more,
armed when a connection opens and after each response (unless a pipelined request is already read), and
cancelled once a request's headers are complete: when it fires, the connection is closed, as nginx's
`client_header_timeout` closes it. A slow body is left to `--request-timeout`, which starts with the headers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request headers take over `header_timeout_s`."""

    header_timeout_s: float = 20.0  # set on a subclass per server (`with_header_timeout`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:  # the next request's headers are to come
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class for uvicorn's `http=` that gives request headers `seconds` to arrive."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": float(seconds)})


__all__ = ["HeaderTimeoutProtocol", "with_header_timeout"]
