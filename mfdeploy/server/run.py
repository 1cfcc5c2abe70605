"""`mfdeploy serve`: the app under uvicorn, stopped cleanly by SIGTERM or Ctrl-C.

On SIGTERM uvicorn stops accepting and closes idle connections; before it
waits for the rest, the batchers start draining (`ServerState.drain`), so
every request is answered (200, or 503 with Retry-After when it cannot
finish) by `grace_s - answer_margin(grace_s)` and uvicorn's own graceful
timeout, `grace_s`, never has to cancel a request (a cancelled request is a
reset connection).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from mfdeploy.errors import UserError
from mfdeploy.server.app import make_app
from mfdeploy.server.config import API_KEY_ENV, ServeConfig
from mfdeploy.server.header_timeout import with_header_timeout
from mfdeploy.server.source import resolve
from mfdeploy.server.state import ServerState

log = logging.getLogger("mfdeploy.server")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def answer_margin(grace_s: float) -> float:
    """Seconds kept at the end of the grace period to write the last answers and close their connections."""
    return min(1.0, grace_s / 4)


def serve(cfg: ServeConfig, on_listen: Callable[[str, int], None] | None = None) -> bool:
    """Serve until SIGTERM or Ctrl-C, then return within `cfg.grace_s` (every request answered first).

    A second Ctrl-C does not cut the requests in flight short (uvicorn's "force exit"): the grace period
    already bounds the wait.

    Args:
        cfg: the configuration (validated here).
        on_listen: called with (host, port) once the socket listens (port 0 resolved).

    Returns:
        True when a model call (or the loading) was still running at the end: the caller should end the
        process with `os._exit` once its output is flushed, since the interpreter's exit would tear its modules
        down under that thread, inside native code (OpenVINO's compiler aborts the process then).

    Raises:
        UserError: a bad setting, a directory that is neither a build nor an export, or towers the backend
            cannot load.
    """
    cfg.validate()
    served = resolve(cfg)  # a missing or broken directory fails here, in one line, before the socket opens
    _logging()
    sock = _listen(cfg.host, cfg.port)  # a port in use fails here, in one line, before the towers load
    if cfg.api_key is None and not _loopback(cfg.host):  # once it listens: a bad address is the one line said
        log.warning("listening on %s without an API key: anyone who can reach this port can use the model "
                    "(set --api-key or %s)", cfg.host, API_KEY_ENV)
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def failed(reason: str) -> None:
        failure.append(reason)
        if server is not None:
            server.should_exit = True

    state = ServerState(cfg, on_failure=failed, served=served)
    # uvicorn's own httptools protocol, with a time limit on request headers when one is set (slowloris)
    http = with_header_timeout(cfg.header_timeout_s) if cfg.header_timeout_s is not None else "auto"
    config = uvicorn.Config(make_app(state), host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            http=http,
                            # uvicorn hands it to asyncio.timeout, which takes a float; its annotation says int
                            timeout_graceful_shutdown=cfg.grace_s, lifespan="on")  # type: ignore[arg-type]
    server = _Server(config, on_listen, state)
    main_thread = threading.current_thread() is threading.main_thread()
    # uvicorn re-raises the signal that stopped it once it is done; SIGTERM or Ctrl-C here means "stop", handled:
    # ignored while it is re-raised, so the command ends with "stopped" and exit 0
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS} if main_thread else {}
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise UserError(failure[0])
    return state.left_running


class _Server(uvicorn.Server):
    """uvicorn.Server that reports where it listens once the socket is bound, and drains before it stops."""

    def __init__(self, config: uvicorn.Config, on_listen: Callable[[str, int], None] | None, state: ServerState):
        super().__init__(config)
        self.on_listen, self.state = on_listen, state

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.on_listen is not None and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.on_listen(host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT and self.should_exit:  # a second Ctrl-C: keep answering (module doc)
            log.warning("already stopping: every request is answered within the grace period")
            return
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None) -> None:
        grace = float(self.config.timeout_graceful_shutdown or 0.0)
        self.state.drain(max(0.0, grace - answer_margin(grace)))
        log.info("stopping: answering every request within %g s", grace)
        await super().shutdown(sockets)


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening (uvicorn would exit with its own log line and status 3)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:  # in use, not an address of this machine, a name that does not resolve, no permission
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


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
