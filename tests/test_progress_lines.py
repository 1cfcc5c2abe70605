"""Plain progress lines where stderr is no terminal (CI logs, nohup): `LineReporter` and `console_reporter`."""

from __future__ import annotations

import io

import pytest

from mfdeploy.cli.render import console_reporter
from mfdeploy.progress import LineReporter, duration


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _run(total, steps, seconds_per_step, **kw):
    clock, out = Clock(), io.StringIO()
    reporter = LineReporter(out, clock, **kw)
    advance = reporter.task("MoPE width (heads, neurons)", total=total)
    for _ in range(steps):
        clock.t += seconds_per_step
        advance(1)
    reporter.close()
    return out.getvalue().splitlines()


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (42.4, "42s"), (125, "2m05s"), (3720, "1h02m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_a_line_every_tenth_with_time_left_then_a_final_line():
    lines = _run(100, 100, 1.0)
    assert lines[0] == "MoPE width (heads, neurons): 10/100 (10%), 10s elapsed, ~1m30s left"
    assert [int(line.split(": ")[1].split("/")[0]) for line in lines[:-1]] == list(range(10, 100, 10))
    assert lines[-1] == "MoPE width (heads, neurons): 100/100 (100%), done in 1m40s"


def test_a_slow_task_reports_every_30_seconds():
    lines = _run(1000, 20, 10.0)  # 10 s per unit: 10% would take 1000 s
    assert len(lines) == 6  # at 30, 60, ..., 180 s
    assert lines[0] == "MoPE width (heads, neurons): 3/1000 (0%), 30s elapsed, ~2h46m left"


def test_a_quick_task_prints_its_final_line_only():
    assert _run(50, 50, 0.005) == ["MoPE width (heads, neurons): 50/50 (100%), done in 0s"]


def test_a_task_without_total_ends_when_the_reporter_closes():
    assert _run(None, 4, 1.0) == ["MoPE width (heads, neurons): 4 done in 4s"]


@pytest.fixture()
def no_forced_terminal(monkeypatch):
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):  # rich would call any stream a terminal
        monkeypatch.delenv(name, raising=False)


def test_console_reporter_writes_lines_when_stderr_is_no_terminal(capsys, no_forced_terminal):
    with console_reporter(True) as reporter:
        assert isinstance(reporter, LineReporter)
        advance = reporter.task("scoring layers", total=3)
        advance(1)
        advance(2)
    err = capsys.readouterr().err
    assert err == "scoring layers: 3/3 (100%), done in 0s\n"  # no bar drawing, no control codes


def test_console_reporter_prints_nothing_more_after_a_failure(capsys, no_forced_terminal):
    with pytest.raises(RuntimeError), console_reporter(True) as reporter:
        reporter.task("distillation")(2)
        raise RuntimeError("stop")
    assert capsys.readouterr().err == ""  # the one error line the CLI prints stays the last word
