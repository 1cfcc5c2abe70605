"""Let the `mfdeploy.prune` and `mfdeploy.export` packages be called as the API functions of the same name.

`mfdeploy.prune(model, ...)` is the Python API (ModelOpt's `mts.sparsify`
style), but `mfdeploy.prune` is also the prune package: once any code imports
`mfdeploy.prune.<module>`, Python binds the package to that attribute. So the
package itself is made callable, forwarding to `mfdeploy.api`: whichever object
a user gets, `mfdeploy.prune(...)` does the same thing.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def make_callable(module_name: str, function: str) -> None:
    """Make the already imported module `module_name` callable as `mfdeploy.api.<function>`."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from mfdeploy import api

            return getattr(api, function)(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
