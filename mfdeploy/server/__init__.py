"""Serving a build: `mfdeploy serve` (an HTTP embedding server with dynamic batching)."""

from mfdeploy.server.app import make_app
from mfdeploy.server.config import BACKENDS, ServeConfig
from mfdeploy.server.run import serve
from mfdeploy.server.state import ServerState

__all__ = ["BACKENDS", "ServeConfig", "ServerState", "make_app", "serve"]
