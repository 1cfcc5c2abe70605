"""`mfdeploy serve`: the app under uvicorn, stopped cleanly by SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable

import uvicorn

from mfdeploy.errors import UserError
from mfdeploy.server.app import make_app
from mfdeploy.server.config import ServeConfig
from mfdeploy.server.state import ServerState

GRACE_S = 10  # longest SIGTERM waits for requests in flight


def serve(cfg: ServeConfig, on_listen: Callable[[str, int], None] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C, then return (requests in flight are finished first).

    Args:
        cfg: the configuration (validated here).
        on_listen: called with (host, port) once the socket listens (port 0 resolved).

    Raises:
        UserError: a bad setting, a build that is not one, or towers the backend cannot load.
    """
    from mfdeploy.runtime import BuildDir

    cfg.validate()
    BuildDir(cfg.build_dir)  # a missing or broken build fails here, in one line, before the socket opens
    _logging()
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def failed(reason: str) -> None:
        failure.append(reason)
        if server is not None:
            server.should_exit = True

    state = ServerState(cfg, on_failure=failed)
    config = uvicorn.Config(make_app(state), host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACE_S, lifespan="on")
    server = _Server(config, on_listen)
    main_thread = threading.current_thread() is threading.main_thread()
    # uvicorn re-raises the signal that stopped it once it is done; a SIGTERM here means "stop", handled: exit 0
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if main_thread else None
    try:
        server.run()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if failure:
        raise UserError(failure[0])


class _Server(uvicorn.Server):
    """uvicorn.Server that reports where it listens once the socket is bound."""

    def __init__(self, config: uvicorn.Config, on_listen: Callable[[str, int], None] | None):
        super().__init__(config)
        self.on_listen = on_listen

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.on_listen is not None and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.on_listen(host, port)


def _logging() -> None:
    """One line per request on stderr at info level (`mfdeploy.server` logger), unless logging is configured."""
    logger = logging.getLogger("mfdeploy.server")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


__all__ = ["serve"]
