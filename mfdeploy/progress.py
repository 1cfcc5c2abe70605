"""Progress reporting: one small protocol for algorithm code.

Algorithm code (`mfdeploy.pruning`) only ever sees a `Reporter`: it asks for a
task and gets back a function that advances it. Whether anything is drawn,
and how, is the caller's business: the CLI draws with rich
(`mfdeploy.cli.render.console_reporter`), the Python API with tqdm
(`tqdm_reporter`).

    with tqdm_reporter(enabled=True) as reporter:
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


class _TqdmReporter:
    """A `Reporter` drawing tqdm bars on stderr (created by `tqdm_reporter` only)."""

    def __init__(self) -> None:
        self.bars: list = []

    def task(self, description: str, total: int | None = None) -> Advance:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=description, leave=True)
        self.bars.append(bar)
        return bar.update


@contextmanager
def tqdm_reporter(enabled: bool = True) -> Iterator[Reporter]:
    """Progress bars (tqdm) for library callers such as the Python API; `enabled=False`: a `NullReporter`.

    The CLI draws with rich instead (`mfdeploy.cli.render.console_reporter`): rich lives only in the CLI.
    """
    if not enabled:
        yield NullReporter()
        return
    reporter = _TqdmReporter()
    try:
        yield reporter
    finally:
        for bar in reporter.bars:
            bar.close()


__all__ = ["Advance", "NullReporter", "Reporter", "tqdm_reporter"]
