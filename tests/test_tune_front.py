"""mfdeploy tune's Pareto front, constraints, pick and reports, on synthetic trial records (no model)."""

from __future__ import annotations

import json
import os

import pytest

from mfdeploy.errors import UserError
from mfdeploy.tuning.front import choose, meets, pareto_front
from mfdeploy.tuning.records import Constraints
from mfdeploy.tuning.report import markdown, write_reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(number, method="mope", ratio=0.5, precision="fp32", *, retention=0.99, speedup=2.0, drop=None,
        latency=2.0, size=10.0, state="complete", reason=None):
    """A trial record shaped as in mfdeploy/tuning/records.py."""
    key = f"{method} r={ratio:g} {precision}"
    r = {"number": number, "key": key, "state": state,
         "config": {"method": method, "ratio": ratio, "budget": None, "pattern": None, "precision": precision,
                    "distill_steps": 0}}
    if state != "complete":
        r["reason"] = reason or "screen drop 5.0 points > 3"
        r["screen"] = {"metric": "mean zero-shot accuracy", "value": 0.7, "drop_points": 5.0, "seconds": 1.0,
                       "retention": 0.93}
        return r
    drop = round(100 * (1 - retention) * 0.8, 4) if drop is None else drop
    r["quality"] = {"metric": "mean zero-shot accuracy", "value": 0.8 - drop / 100, "drop_points": drop,
                    "retention": retention, "tasks": {"a": {"accuracy": 0.8 - drop / 100}}}
    r["speed"] = {"speedup": speedup, "latency_ms": latency, "shared_with": None}
    r["size_mb"] = size
    r["build"] = f"work/builds/{number:04d}"
    r["seconds"] = {"total": 10.0}
    return r


def numbers(records):
    return [r["number"] for r in records]


def dominates(a, b):
    qa, sa = a["quality"]["retention"], a["speed"]["speedup"]
    qb, sb = b["quality"]["retention"], b["speed"]["speedup"]
    return qa >= qb and sa >= sb and (qa > qb or sa > sb)


@pytest.fixture
def trials():
    return [
        rec(0, "multiflow", 0.3, "fp32", retention=0.998, speedup=1.3),
        rec(1, "mope", 0.5, "fp32", retention=0.990, speedup=1.8),
        rec(2, "mope", 0.5, "int8", retention=0.985, speedup=2.6),
        rec(3, "wanda", 0.5, "fp32", retention=0.980, speedup=1.7),  # dominated by #1
        rec(4, "mope", 0.7, "int8", retention=0.950, speedup=3.4),
        rec(5, "wanda", 0.7, "int8", retention=0.940, speedup=3.0),  # dominated by #4
        rec(6, "mope", 0.9, "int8", state="screened"),
        rec(7, "magnitude", 0.9, "fp32", state="failed", reason="export failed: out of memory"),
    ]


def test_front_keeps_only_non_dominated_complete_trials_fastest_first(trials):
    front = pareto_front(trials)
    assert numbers(front) == [4, 2, 1, 0]
    complete = [r for r in trials if r["state"] == "complete"]
    for point in front:
        assert not any(dominates(other, point) for other in complete)
    for other in complete:  # and every trial left out is dominated by a front point
        if other not in front:
            assert any(dominates(point, other) for point in front)


def test_front_never_holds_screened_or_failed_trials(trials):
    # a screened or failed record carrying better numbers than any complete one still never gets on the front
    best = rec(8, retention=1.0, speedup=9.0)
    for state in ("screened", "failed"):
        ghost = dict(best, state=state, reason="stopped")
        assert 8 not in numbers(pareto_front([*trials, ghost]))
    assert pareto_front([r for r in trials if r["state"] != "complete"]) == []
    assert pareto_front([]) == []


def test_identical_points_are_all_on_the_front():
    a = rec(0, "mope", 0.5, "int8", retention=0.98, speedup=2.5)
    b = rec(1, "wanda", 0.5, "int8", retention=0.98, speedup=2.5)
    c = rec(2, "mope", 0.3, "fp32", retention=0.97, speedup=2.0)  # dominated by both
    assert numbers(pareto_front([c, b, a])) == [0, 1]


def test_meets_names_each_broken_constraint():
    r = rec(0, retention=0.98, speedup=1.8, drop=1.4, latency=3.2, size=12.5)
    assert meets(r, Constraints(max_drop=2, min_speedup=1.5, max_latency_ms=4, max_size_mb=20)) == []
    broken = meets(r, Constraints(max_drop=1, min_speedup=2, max_latency_ms=3, max_size_mb=10))
    assert broken == ["drop 1.40 points > --max-drop 1", "speed-up 1.80x < --min-speedup 2",
                      "latency 3.20 ms > --max-latency-ms 3", "size 12.5 MiB > --max-size-mb 10"]
    assert meets(r, Constraints()) == []  # nothing bounded: `meets` takes the constraints as given
    # a value just over the limit is printed with the decimals that show it is over
    assert meets(rec(1, drop=1.004), Constraints(max_drop=1)) == ["drop 1.004 points > --max-drop 1"]
    assert meets(dict(r, size_mb=None), Constraints(max_size_mb=10)) == ["size unknown (--max-size-mb 10)"]


def test_choose_picks_the_fastest_front_point_within_the_constraints(trials):
    pick, why = choose(trials, Constraints(max_drop=2))  # #4 drops 4 points, #2 1.2
    assert pick["number"] == 2
    assert why == "fastest point of the front within --max-drop 2 (2.60x, drop 1.20 points)"
    pick, _ = choose(trials, Constraints(max_drop=10))
    assert pick["number"] == 4
    pick, _ = choose(trials, Constraints())  # the default: --max-drop 1
    assert pick["number"] == 1


def test_choose_breaks_ties_by_retention_then_trial_number():
    slower = rec(0, retention=0.999, speedup=2.0)
    lower = rec(1, retention=0.97, speedup=3.0)
    higher = rec(2, retention=0.98, speedup=3.0)
    twin = rec(3, "wanda", retention=0.98, speedup=3.0)
    assert choose([slower, lower, twin, higher], Constraints(max_drop=5))[0]["number"] == 2


def test_choose_can_pick_off_the_front_when_every_dominating_trial_breaks_a_bound():
    big = rec(0, retention=0.99, speedup=3.0, size=50)
    small = rec(1, retention=0.98, speedup=2.0, size=5)  # dominated by #0, but the only one within 10 MiB
    pick, why = choose([big, small], Constraints(max_size_mb=10))
    assert pick["number"] == 1
    assert why.startswith("fastest trial within --max-size-mb 10 (2.00x") and "off the front" in why


def test_choose_without_a_candidate_names_the_constraint_and_the_closest_trial(trials):
    pick, why = choose(trials, Constraints(max_drop=0.1))
    # the closest by drop is #0 (0.16 points): fewest broken, then the smallest excess over the limit
    assert pick is None
    assert why == ("no candidate meets --max-drop 0.1: closest was #0 multiflow r=0.3 fp32 "
                   "(drop 0.16 points > --max-drop 0.1)")
    # fewest broken constraints comes before the size of the excess: #4 breaks one, the others two
    pick, why = choose(trials, Constraints(max_drop=0.1, min_speedup=3.3))
    assert pick is None and "closest was #0" not in why
    assert why.startswith("no candidate meets --max-drop 0.1, --min-speedup 3.3: closest was #4 mope r=0.7 int8")


def test_choose_says_when_no_trial_completed():
    pick, why = choose([rec(0, state="screened"), rec(1, state="failed")], Constraints())
    assert pick is None
    assert why == "no trial completed (1 screened, 1 failed): there is nothing to pick"
    assert choose([], Constraints())[0] is None


def summary_of(trials, constraints=Constraints(max_drop=2)):
    pick, why = choose(trials, constraints)
    return {"model": "tiny-clip", "backend": "onnx-cpu", "batch_size": 8,
            "eval": {"tasks": "bundled", "images": 200}, "constraints": constraints.describe(),
            "space": {"method": ["mope", "wanda"], "ratio": [0.3, 0.5, 0.7], "precision": ["fp32", "int8"]},
            "dense": {"quality": {"value": 0.8, "tasks": {}}, "speed": {"latency_ms": 4.0}},
            "trials": trials, "front": numbers(pareto_front(trials)),
            "pick": {"number": pick["number"] if pick else None, "why": why},
            "time": {"budget_s": 600, "spent_s": 412.5, "stopped": "search space exhausted"},
            "load_avg": [1.2, 0.9, 0.7]}


@pytest.mark.parametrize("count", [0, 1, 8])
def test_write_reports_writes_json_markdown_and_a_png(tmp_path, trials, count):
    summary = summary_of(trials[:count] if count != 8 else trials)
    paths = write_reports(tmp_path / "tune", summary)
    assert set(paths) == {"json", "md", "png"}
    assert sorted(p.name for p in (tmp_path / "tune").iterdir()) == ["pareto.png", "tune.json", "tune.md"]
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(summary))
    png = paths["png"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    md = paths["md"].read_text()
    assert md.startswith("# mfdeploy tune: tiny-clip") and "onnx-cpu" in md and "--max-drop 2" in md
    if count == 0:
        assert "No trial completed: there is no front." in md and "No pick:" in md


def test_markdown_tables_the_front_with_the_pick_then_every_trial(trials):
    md = markdown(summary_of(trials))
    front = md.split("## Pareto front")[1].split("## All trials")[0]
    rows = [line for line in front.splitlines() if line.startswith("| ") and "configuration" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["4", "2", "1", "0"]
    pick_row = next(row for row in rows if row.split("|")[1].strip() == "2")
    assert "mope r=0.5 int8" in pick_row and "2.60x" in pick_row and "98.5%" in pick_row
    assert pick_row.rstrip(" |").endswith("yes")
    everything = md.split("## All trials")[1]
    assert "export failed: out of memory" in everything and "screened" in everything
    assert "#2 mope r=0.5 int8: fastest point of the front within --max-drop 2" in md
    widths = {len(line) for line in front.splitlines() if line.startswith("|")}
    assert len(widths) == 1  # padded columns: the table lines up in a terminal


def test_nan_becomes_null_and_the_json_stays_strict(tmp_path, trials):
    summary = summary_of(trials)
    summary["dense"]["speed"]["p95_ms"] = float("nan")
    path = write_reports(tmp_path, summary)["json"]
    assert json.loads(path.read_text(), parse_constant=pytest.fail)["dense"]["speed"]["p95_ms"] is None


def test_a_failed_write_ends_in_one_error_and_leaves_nothing(tmp_path, trials):
    blocker = tmp_path / "tune"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot write .*tune"):
        write_reports(blocker, summary_of(trials))
    assert blocker.read_text() == "not a folder"
    assert os.listdir(tmp_path) == ["tune"]  # no temporary file or folder beside it


def test_a_report_that_cannot_be_drawn_writes_no_file(tmp_path, trials, monkeypatch):
    import mfdeploy.tuning.report as report

    def broken(summary, out):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "pareto_png", broken)
    with pytest.raises(RuntimeError):
        write_reports(tmp_path / "tune", summary_of(trials))
    assert not (tmp_path / "tune").exists()
