"""Hub ids on a machine that cannot reach the hub: read from the local cache at once, or fail in one line.

Without this, `mfdeploy eval owner/name` on an offline machine spent about 30 s
in huggingface_hub's retries (a dozen warning lines) before transformers said
it could not connect. One short connection attempt to the hub's endpoint
decides instead: when it fails, every `from_pretrained` of a hub id gets
`local_files_only=True`, so a cached model loads without the network and an
uncached one is refused at once, with what to do.

Offline mode (`HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE`, read when asked, so a value set after
huggingface_hub was imported counts too) answers without the network. Otherwise the name lookup gets the
probe's time and no more (a resolver without an answer retries for far longer: the connection timeout does
not bound it), a failed lookup is the answer at once, and the connection attempts to the addresses found share
that time (`socket.create_connection` gives each address the whole timeout). Behind a proxy (`HTTPS_PROXY` and
the like) a direct attempt says nothing, so the library's own handling is kept.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mfdeploy.errors import UserError

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 3.0  # the name lookup and the connection attempts together


def offline() -> str | None:
    """Which offline mode is on (huggingface_hub's, or its variables set since it was imported), else None."""
    from huggingface_hub import constants

    for var in OFFLINE_VARS:  # huggingface_hub's own test of the value
        if os.environ.get(var, "").upper() in constants.ENV_VARS_TRUE_VALUES:
            return f"{var} is set"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return None


def unreachable() -> str | None:
    """Why the hub cannot be reached from this process, or None (reachable, or behind a proxy: not judged).

    The network is asked once per process: the answer does not change between the loads of one command.
    """
    mode = offline()
    return f"offline mode: {mode}" if mode else _probe()


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in PROXY_VARS):
        return None
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    found: list[Any] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)

    resolver = threading.Thread(target=lookup, name="mfdeploy-hub-lookup", daemon=True)  # left to end on its own
    resolver.start()
    resolver.join(PROBE_TIMEOUT_S)
    if not found:
        return f"{host}: no answer to the name lookup within {PROBE_TIMEOUT_S:g} s"
    if isinstance(found[0], OSError):
        return f"{host}: name lookup failed: {found[0].strerror or found[0]}"
    why = "no address"
    for family, kind, proto, _, address in found[0]:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(address)
            return None
        except OSError as e:
            why = str(e.strerror or e)
        finally:
            sock.close()
    return f"{host}:{port}: {why}"


def load_kwargs(where: Path | str) -> dict[str, Any]:
    """What `from_pretrained(where, ...)` needs here: `local_files_only` for a hub id while the hub is out of reach."""
    return {"local_files_only": True} if isinstance(where, str) and unreachable() else {}


def not_cached(where: Path | str, what: str) -> UserError | None:
    """The one-line refusal for a hub id that failed to load while the hub is out of reach (None otherwise)."""
    why = unreachable() if isinstance(where, str) else None
    if why is None:
        return None
    from huggingface_hub import constants

    return UserError(f"{where}: no such model here: no folder of that name, and the local Hugging Face cache "
                     f"({constants.HF_HUB_CACHE}) does not hold it (its {what}); nor can the hub be reached ({why}): "
                     f"download it where the hub is reachable (`hf download {where}`) and copy that cache here, or "
                     "pass a local checkpoint directory (save_pretrained)")
