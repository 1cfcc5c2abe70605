"""The `mfdeploy` entry point `main`, and how errors become exit codes.

Each verb lives in its own module of this package and registers itself on
`app` (`mfdeploy.cli.root`) when imported; `mfdeploy.cli.verbs` imports them
all, in the order `--help` lists them.
"""

from __future__ import annotations

import signal
import sys
import threading

import typer

from mfdeploy.cli.render import error
from mfdeploy.cli.root import app
from mfdeploy.errors import MfdeployError, os_error_line


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors end in one line on stderr and exit code 2, never a traceback.

    So do filesystem errors (`OSError`: a path that cannot be read or written, a full disk), named with
    their path and errno.
    """
    import mfdeploy.cli.verbs  # noqa: F401  (registers every verb on `app`)
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


__all__ = ["app", "main"]
