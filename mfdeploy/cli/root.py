"""The root `mfdeploy` typer app every verb registers on, and its `--version`.

Apart from the entry point (`mfdeploy.cli.app.main`), which imports every verb: a verb's module imports this one,
never the module that imports the verbs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mfdeploy._version import __version__
from mfdeploy.cli.help import Command, Group
from mfdeploy.cli.render import out
from mfdeploy.extras import require

# str options that name a file or folder (the others are paths by type); a value like `--out=~/x` reaches us with its
# `~` (no shell expands one after `=`), as does a quoted one
_PATH_TEXTS = frozenset({"model", "calib", "data", "eval_data", "space"})


def _home(name: str, value: Any) -> Any:
    """`value` with a leading `~` taken as the home folder, as the shell takes it: every path option of every verb."""
    if isinstance(value, Path):
        return value.expanduser()
    if name in _PATH_TEXTS and isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    return value


class _App(typer.Typer):
    """typer.Typer whose commands render their help the usual way (`mfdeploy.cli.help`), and check the optional
    packages their options need (`mfdeploy.extras`) before they run."""

    def command(self, name: str | None = None, *args: Any, cls: Any = None, **kwargs: Any) -> Any:  # noqa: D102
        register = super().command(name, *args, cls=cls or Command, **kwargs)

        def decorator(f: Callable[..., Any]) -> Any:
            verb = name or f.__name__.replace("_", "-")  # the name typer gives the command

            @functools.wraps(f)  # typer reads the options from the wrapped signature
            def checked(*a: Any, **options: Any) -> Any:
                options = {k: _home(k, v) for k, v in options.items()}
                require(verb, **options)  # before the first step: a missing extra fails at once, in one line
                return f(*a, **options)

            return register(checked)

        return decorator


app = _App(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prune CLIP-style models once (MULTIFLOW, 2:4), export to ONNX, build TensorRT engines, serve and bench.",
)


def _version(value: bool) -> None:
    if value:
        out.print(f"mfdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """mfdeploy: prune, export, build, serve."""


__all__ = ["app"]
