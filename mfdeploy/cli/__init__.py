"""The `mfdeploy` command line: one small module per verb, option groups shared by verbs, rich rendering.

No library logic here: each verb parses its options into the library's
typed configs and calls the library (or `mfdeploy.api`), then renders the result.
"""

from importlib import import_module

from mfdeploy.cli.app import app, main
from mfdeploy.cli.options import PRUNE_OPTIONS

# Each verb's module registers it on `app` when imported; `--help` lists them in this order.
VERBS = ("info", "prune", "eval", "bench", "export", "engine", "quantize", "build", "serve", "triton")
for _verb in VERBS:
    import_module(f"mfdeploy.cli.{_verb}")

__all__ = ["PRUNE_OPTIONS", "VERBS", "app", "main"]
