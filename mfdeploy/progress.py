"""Progress reporting: one small protocol for algorithm code, one rich display for the terminal.

Algorithm code (`mfdeploy.prune`) only ever sees a `Reporter`: it asks for a
task and gets back a function that advances it. Whether anything is drawn,
and how, is the caller's business; rich is imported only when a
`console_reporter` is actually opened.

    with console_reporter(enabled=True) as reporter:
        advance = reporter.task("calibration pairs", total=256)
        advance(32)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

Advance = Callable[[int], None]  # advance(n): n more units of the task are done


class Reporter(Protocol):
    """What long-running library code reports progress to."""

    def task(self, description: str, total: int | None = None) -> Advance:
        """Start a task of `total` units; returns the function that advances it."""
        ...


class NullReporter:
    """Reports nothing (library default, tests, benchmarks)."""

    def task(self, description: str, total: int | None = None) -> Advance:
        """A task nobody sees."""
        return _ignore


def _ignore(n: int = 1) -> None:
    return None


class _RichReporter:
    """A `Reporter` drawing rich progress bars (created by `console_reporter` only)."""

    def __init__(self, progress) -> None:
        self._progress = progress

    def task(self, description: str, total: int | None = None) -> Advance:
        task_id = self._progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            self._progress.advance(task_id, n)

        return advance


@contextmanager
def console_reporter(enabled: bool = True) -> Iterator[Reporter]:
    """Progress bars on stderr (rich) while the block runs; `enabled=False` yields a `NullReporter`."""
    if not enabled:
        yield NullReporter()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )
    with prog:
        yield _RichReporter(prog)


__all__ = ["Advance", "NullReporter", "Reporter", "console_reporter"]
