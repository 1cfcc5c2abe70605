"""Every verb of the `mfdeploy` command: importing this module registers them all on `app` (`mfdeploy.cli.root`)."""

from importlib import import_module

# Each verb's module registers it on `app` when imported; `--help` lists them in this order.
VERBS = ("info", "prune", "eval", "bench", "export", "engine", "quantize", "build", "tune", "serve", "triton")
for _verb in VERBS:
    import_module(f"mfdeploy.cli.{_verb}")

__all__ = ["VERBS"]
