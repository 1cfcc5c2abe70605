"""The `mfdeploy` command as a click command object, for the generated CLI reference.

`docs/reference/cli.md` renders it with mkdocs-click (`:module: mfdeploy.cli.reference`, `:command: command`),
and `tests/test_docs.py` parses every `mfdeploy ...` line of README.md and docs/ against it, so the reference
and the checked examples come from the same typer app the console script runs. Importing this module imports
`mfdeploy.cli`, which registers every verb; the console entry point (`mfdeploy.cli.app.main`) never imports it,
so building the click object costs the CLI's start-up nothing.
"""

from __future__ import annotations

import typer.main

from mfdeploy.cli import app

# typer builds a click-style group from the app: every verb, option, default and help text, as `--help` shows them
command = typer.main.get_command(app)

__all__ = ["command"]
