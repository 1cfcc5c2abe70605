"""Bench reports: the previous report is kept, unstable cells are flagged (fake timings, never real ones)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from helpers import EchoRunner, make_build

from mfdeploy.bench import report, run_bench
from mfdeploy.bench import run as bench
from mfdeploy.bench.stability import spread_reason, warning
from mfdeploy.cli import main

FAST = dict(backends=["ort-cpu"], towers=["vision"], batch_sizes=[1], warmup=0, iters=2, min_time=0.0, threads=1)
OLD = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()


@pytest.fixture(scope="module")
def build_dir(tiny_clip_dir, tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("bench_report") / "build", tiny_clip_dir)


@pytest.fixture()
def fresh_build(build_dir):
    for p in build_dir.glob("bench*"):
        p.unlink()
    return build_dir


def _fake_timings(latencies_ms: dict[str, list[float]]):
    """A stand-in for `time_interleaved` that returns fixed latencies per variant (in ms)."""
    def fake(calls, warmup, iters, min_time=0.0, timers=None):
        return {name: np.asarray(latencies_ms[name]) / 1e3 for name in calls}
    return fake


STABLE = {"pruned": [10.0] * 19 + [12.0], "dense": [10.0] * 19 + [11.0]}
WIDE = {"pruned": [5.0] * 18 + [45.0, 45.0], "dense": [10.0] * 20}  # pruned p95 = 9x p50


def test_second_bench_keeps_the_first_report(fresh_build):
    rows1 = run_bench(fresh_build, **FAST)
    first = {s: (fresh_build / f"bench{s}").read_bytes() for s in (".json", ".md", ".png")}
    for s in first:
        os.utime(fresh_build / f"bench{s}", (OLD, OLD))
    kept = {}
    rows2 = run_bench(fresh_build, **FAST, on_written=kept.update)
    stem = "bench-20260102T030405Z"
    assert [p.name for p in kept["previous"]] == [f"{stem}{s}" for s in (".json", ".md", ".png")]
    for s, data in first.items():
        assert (fresh_build / f"{stem}{s}").read_bytes() == data  # the first report, unchanged
    assert json.loads((fresh_build / f"{stem}.json").read_text()) == json.loads(json.dumps(rows1))
    assert json.loads((fresh_build / "bench.json").read_text()) == json.loads(json.dumps(rows2))
    # a third report whose predecessor carries the same time gets a distinct name; nothing is overwritten
    for s in first:
        os.utime(fresh_build / f"bench{s}", (OLD, OLD))
    run_bench(fresh_build, **FAST)
    assert (fresh_build / f"{stem}-2.json").is_file() and (fresh_build / f"{stem}.md").read_bytes() == first[".md"]
    assert not list(fresh_build.glob(".bench*"))


def test_cli_says_where_the_previous_report_went(fresh_build, capsys):
    argv = ["bench", str(fresh_build), "--backends", "ort-cpu", "--towers", "text", "--batch-sizes", "1",
            "--warmup", "0", "--iters", "2", "--min-time", "0", "--threads", "1", "--no-dense"]
    main(argv)
    assert "previous report" not in capsys.readouterr().err
    os.utime(fresh_build / "bench.json", (OLD, OLD))
    main(argv)
    err = capsys.readouterr().err
    assert "the previous report is kept as bench-20260102T030405Z.json, bench-20260102T030405Z.md" in err


def test_spread_reason():
    assert spread_reason({"pruned": {"p50_ms": 5.0, "p95_ms": 10.0}}) is None  # exactly 2x: still stable
    reason = spread_reason({"pruned": {"p50_ms": 5.0, "p95_ms": 45.0}, "dense": {"p50_ms": 10.0, "p95_ms": 21.0}})
    assert reason == "pruned p95 9.0x p50 (45.00 vs 5.00 ms); dense p95 2.1x p50 (21.00 vs 10.00 ms) (> 2x)"


def _cell(monkeypatch, latencies):
    monkeypatch.setattr(bench, "time_interleaved", _fake_timings(latencies))
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 5.0, 3.0))
    runners = {"pruned": EchoRunner(), "dense": EchoRunner()}
    return bench.time_cell(runners, "ort-cpu", "vision", 8, 16, {8: np.zeros(1)}, {}, 0, 20, 0.0, 2)


def test_wide_spread_flags_the_cell_in_rows_markdown_and_warning(monkeypatch):
    rows = _cell(monkeypatch, WIDE)
    assert [r["unstable"] for r in rows] == [True, True]  # the whole cell: its ratio is what is spoilt
    assert all("pruned p95 9.0x p50" in r["unstable_reason"] for r in rows)
    assert rows[0]["load_avg_start"] == rows[0]["load_avg_end"] == [7.0, 5.0, 3.0]
    meta = {"model": "m", "load_avg_start": [7.0, 5.0, 3.0], "load_avg_end": [6.5, 5.0, 3.0]}
    md = report.markdown(rows, meta)
    assert f"{rows[0]['pruned_over_dense']:.2f}x †" in md
    assert "- ort-cpu vision batch 8: pruned p95 9.0x p50" in md
    assert "load average (1 / 5 / 15 min) at start 7.00 / 5.00 / 3.00, at end 6.50 / 5.00 / 3.00" in md
    line = warning(rows, meta)
    assert "\n" not in line and line.startswith("1 of 1 cells timed unstably")
    assert "load average 7.00 at start, 6.50 at end" in line and "--min-time" in line


def test_narrow_spread_is_not_flagged(monkeypatch):
    rows = _cell(monkeypatch, STABLE)
    assert [r["unstable"] for r in rows] == [False, False] and not any("unstable_reason" in r for r in rows)
    md = report.markdown(rows, {"model": "m"})
    assert "†" not in md and "Unstable" not in md
    assert warning(rows, {}) is None


def test_cli_prints_one_warning_line_for_unstable_cells(fresh_build, capsys, monkeypatch):
    monkeypatch.setattr(bench, "time_interleaved", _fake_timings(WIDE))
    main(["bench", str(fresh_build), "--backends", "ort-cpu", "--towers", "vision", "--batch-sizes", "1,2",
          "--threads", "1"])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 of 2 cells timed unstably" in warnings[0]
    rows = json.loads((fresh_build / "bench.json").read_text())
    assert all(r["unstable"] for r in rows if "throughput" in r)
    assert "†" in (fresh_build / "bench.md").read_text()


def test_a_report_that_cannot_be_written_leaves_the_previous_one_in_place(fresh_build, monkeypatch):
    """On a full disk the previous report was renamed aside first, then the new one failed: bench.json was gone.
    The new files are written first now."""
    import errno

    run_bench(fresh_build, **FAST)
    first = {s: (fresh_build / f"bench{s}").read_bytes() for s in (".json", ".md", ".png")}

    def full(rows, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "plot", full)
    with pytest.raises(Exception, match="No space left on device"):
        run_bench(fresh_build, **FAST)
    assert {s: (fresh_build / f"bench{s}").read_bytes() for s in first} == first
    assert sorted(p.name for p in fresh_build.glob("bench*")) == ["bench.json", "bench.md", "bench.png"]
    assert not list(fresh_build.glob(".bench*"))
