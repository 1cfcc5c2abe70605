"""One progress display for long steps (rich, on stderr)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_console = Console(stderr=True)


@contextmanager
def progress_display(enabled: bool = True) -> Iterator[Progress]:
    """A rich Progress on stderr; `enabled=False` keeps the API but draws nothing."""
    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=_console, disable=not enabled, transient=False,
    )
    with prog:
        yield prog
