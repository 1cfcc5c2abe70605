"""mfdeploy: prune CLIP-style vision-language models once, export, build, serve.

The Python API (README "Python"): `load`, `prune`, `export`, `evaluate`,
`adapter_for` and `PruneResult`, defined in `mfdeploy.api`. They are
imported on first use, so `import mfdeploy` (and the CLI's start-up) does not
import torch.
"""

from typing import Any

__version__ = "0.1.0"

_API = ("PruneResult", "adapter_for", "evaluate", "export", "load", "prune")


def __getattr__(name: str) -> Any:
    if name in ("prune", "export"):  # packages too: callable as the API functions (mfdeploy._callable)
        import importlib

        return importlib.import_module(f"mfdeploy.{name}")
    if name in _API:
        from mfdeploy import api

        return getattr(api, name)
    raise AttributeError(f"module 'mfdeploy' has no attribute {name!r}")


__all__ = ["__version__", *_API]
