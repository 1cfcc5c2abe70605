"""The `mfdeploy` typer app, its entry point `main`, and how errors become exit codes.

Each verb lives in its own module of this package and registers itself on
`app` when imported (`mfdeploy.cli.__init__` imports them all, in the order
`--help` lists them).
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer

from mfdeploy import __version__
from mfdeploy.cli.help import Command, Group
from mfdeploy.cli.render import error, out
from mfdeploy.errors import MfdeployError, os_error_line
from mfdeploy.extras import require


class _App(typer.Typer):
    """typer.Typer whose commands render their help the usual way (`mfdeploy.cli.help`), and check the optional
    packages their options need (`mfdeploy.extras`) before they run."""

    def command(self, name: str | None = None, *args: Any, cls: Any = None, **kwargs: Any) -> Any:  # noqa: D102
        register = super().command(name, *args, cls=cls or Command, **kwargs)

        def decorator(f: Callable[..., Any]) -> Any:
            verb = name or f.__name__.replace("_", "-")  # the name typer gives the command

            @functools.wraps(f)  # typer reads the options from the wrapped signature
            def checked(*a: Any, **options: Any) -> Any:
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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors end in one line on stderr and exit code 2, never a traceback.

    So do filesystem errors (`OSError`: a path that cannot be read or written, a full disk), named with
    their path and errno.
    """
    import mfdeploy.cli  # noqa: F401  (registers every verb on `app`)
    from mfdeploy.artifacts.io import Terminated
    from mfdeploy.cli.help import usage_errors

    def on_sigterm(signum: int, frame: object) -> None:
        raise Terminated()  # unwinds like Ctrl-C, so temporary outputs are removed (a container stop)

    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc != 0:  # typer returns (not raises) the code of Exit and of Ctrl-C
            if rc == 130:
                error("interrupted")
            sys.exit(rc)
    except MfdeployError as e:
        error(str(e))
        sys.exit(2)
    except OSError as e:  # a filesystem failure no command explained (temporary outputs are gone by now)
        error(os_error_line(e))
        sys.exit(2)
    except usage_errors() as e:  # a bad command line: typer's own "Usage: ... Error: ..." lines, exit 2
        e.show()  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        error("interrupted")
        sys.exit(130)
    except Terminated:
        error("terminated (SIGTERM); nothing was left half written")
        sys.exit(143)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
