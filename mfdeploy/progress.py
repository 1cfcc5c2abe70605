"""Progress reporting: one small protocol for algorithm code.

Algorithm code (`mfdeploy.pruning`) only ever sees a `Reporter`: it asks for a
task and gets back a function that advances it. Whether anything is drawn,
and how, is the caller's business: the CLI draws with rich
(`mfdeploy.cli.render.console_reporter`), or in plain lines where stderr is
not a terminal (`LineReporter`: CI logs, `nohup`), the Python API with tqdm
(`tqdm_reporter`).

    with tqdm_reporter(enabled=True) as reporter:
        advance = reporter.task("calibration pairs", total=256)
        advance(32)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

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


def duration(seconds: float) -> str:
    """`42s`, `2m05s`, `1h02m`: a duration as a progress line states it."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineReporter:
    """A `Reporter` writing plain progress lines, for a stderr that is no terminal (CI logs, `nohup`).

    `MoPE width (heads, neurons): 120/1200 (10%), 2m05s elapsed, ~18m05s left`: a line when another
    `step` of the total is done (but not within `min_gap_s` of the last line), or `every_s` after the last
    line whatever was done; and a last line when the task completes (for a task of unknown total, when the
    reporter closes).

    Args:
        stream: where lines go (default: `sys.stderr` at the time of writing).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 step: float = 0.1, every_s: float = 30.0, min_gap_s: float = 5.0) -> None:
        self._stream, self._clock = stream, clock
        self.step, self.every_s, self.min_gap_s = step, every_s, min_gap_s
        self._open: list[Callable[[], None]] = []  # final lines of the tasks without a total

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def task(self, description: str, total: int | None = None) -> Advance:
        """Start a task; returns its `advance(n)`."""
        start = self._clock()
        state = {"done": 0, "last_t": start, "last_done": 0, "finished": False}

        def line(now: float) -> str:
            done, elapsed = state["done"], now - start
            if not total:
                return f"{description}: {done} done, {duration(elapsed)} elapsed"
            text = f"{description}: {done}/{total} ({100 * done // total}%), {duration(elapsed)} elapsed"
            if done and done < total:
                text += f", ~{duration(elapsed * (total - done) / done)} left"
            return text

        def advance(n: int = 1) -> None:
            if state["finished"]:
                return
            state["done"] += n
            now = self._clock()
            if total and state["done"] >= total:
                state["finished"] = True
                self._write(f"{description}: {state['done']}/{total} (100%), done in {duration(now - start)}")
                return
            since = now - state["last_t"]
            stepped = bool(total) and (state["done"] - state["last_done"]) >= self.step * (total or 1)
            if since >= self.every_s or (stepped and since >= self.min_gap_s):
                state["last_t"], state["last_done"] = now, state["done"]
                self._write(line(now))

        def close() -> None:
            if not total and not state["finished"]:
                state["finished"] = True
                self._write(f"{description}: {state['done']} done in {duration(self._clock() - start)}")

        self._open.append(close)
        return advance

    def close(self) -> None:
        """Final lines of the tasks of unknown total."""
        for close in self._open:
            close()
        self._open.clear()


__all__ = ["Advance", "LineReporter", "NullReporter", "Reporter", "duration", "tqdm_reporter"]
