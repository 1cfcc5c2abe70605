"""Hub ids on a machine that cannot reach the hub: read from the local cache at once, or fail in one line.

Without this, `mfdeploy eval owner/name` on an offline machine spent about 30 s
in huggingface_hub's retries (a dozen warning lines) before transformers said
it could not connect. One short connection attempt to the hub's endpoint
decides instead: when it fails, every `from_pretrained` of a hub id gets
`local_files_only=True`, so a cached model loads without the network and an
uncached one is refused at once, with what to do.

Behind a proxy (`HTTPS_PROXY` and the like) a direct attempt says nothing, so
the library's own handling is kept; `HF_HUB_OFFLINE=1` is honoured by the
library itself and only changes the message here.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mfdeploy.errors import UserError

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
PROBE_TIMEOUT_S = 3.0


@functools.lru_cache(maxsize=1)
def unreachable() -> str | None:
    """Why the hub cannot be reached from this process, or None (reachable, or behind a proxy: not judged).

    Asked once per process: the answer does not change between the loads of one command.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in PROXY_VARS):
        return None
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"


def load_kwargs(where: Path | str) -> dict[str, Any]:
    """What `from_pretrained(where, ...)` needs here: `local_files_only` for a hub id while the hub is out of reach."""
    return {"local_files_only": True} if isinstance(where, str) and unreachable() else {}


def not_cached(where: Path | str, what: str) -> UserError | None:
    """The one-line refusal for a hub id that failed to load while the hub is out of reach (None otherwise)."""
    why = unreachable() if isinstance(where, str) else None
    if why is None:
        return None
    from huggingface_hub import constants

    return UserError(f"cannot load the {what} of {where}: the Hugging Face hub cannot be reached ({why}) and the "
                     f"local cache ({constants.HF_HUB_CACHE}) does not hold it; download it where the hub is "
                     f"reachable (`hf download {where}`) and copy that cache here, or pass a local checkpoint "
                     "directory (save_pretrained)")
