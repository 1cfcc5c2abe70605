"""mfdeploy: prune CLIP-style vision-language models once, export, build, serve.

The Python API (README "Python"): `load`, `prune`, `export`, `evaluate`,
`tune`, `adapter_for` and `PruneResult`, defined in `mfdeploy.api`. They are
imported on first use, so `import mfdeploy` (and the CLI's start-up) does not
import torch. They are plain functions and classes: the stages' packages are
`mfdeploy.pruning`, `mfdeploy.exporting` and `mfdeploy.tuning`, so no package shares a name with
an API function.
"""

from typing import TYPE_CHECKING, Any

from mfdeploy._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see: the functions themselves, with their signatures
    from mfdeploy.api import PruneResult, adapter_for, evaluate, export, load, prune, tune

__all__ = ["PruneResult", "__version__", "adapter_for", "evaluate", "export", "load", "prune", "tune"]
_API = frozenset(__all__) - {"__version__"}  # resolved from mfdeploy.api on first use


def __getattr__(name: str) -> Any:
    if name in _API:
        from mfdeploy import api

        return getattr(api, name)
    raise AttributeError(f"module 'mfdeploy' has no attribute {name!r}")

