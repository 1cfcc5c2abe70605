"""`mfdeploy tune` end to end on the bundled model: one real two-point search shared by the module, then its
journal (resume, damaged lines, a killed run, the lock), its constraints and `--pick`, each on a copy of it.

The copies keep `work/` (the builds) and `dense.json`, so a trial that runs again costs an evaluation and a
timing, not a prune; the search in `tuned` is the only one that prunes (plus the slow `--force` test).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_cli

import mfdeploy
from mfdeploy.errors import UserError
from mfdeploy.tuning import journal

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACE = 'methods = ["multiflow"]\nratios = [0.5]\nprecisions = ["fp32", "int8"]\ndistill_steps = [0]\n'
KEYS = {"multiflow r=0.5 fp32", "multiflow r=0.5 int8"}
MAX_DROP = 5.0  # multiflow 0.5 drops about 1.3 points: the default bound of 1 would pick nothing


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One real tune through the Python API, the space file named relative to the working directory."""
    root = tmp_path_factory.mktemp("tune")
    (root / "space.toml").write_text(SPACE)
    said: list[str] = []
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = mfdeploy.tune(out=root / "run", space="space.toml", time_budget=5, max_drop=MAX_DROP,
                               progress=said.append)
    finally:
        os.chdir(cwd)
    return SimpleNamespace(root=root, out=root / "run", space=root / "space.toml", result=result, said=said)


def copy_run(tuned, tmp_path: Path, *, trials: bool = True) -> Path:
    """A copy of the shared tune; `trials=False`: only its builds, dense reference and settings (a tune killed
    before its first trial finished)."""
    out = tmp_path / "run"
    shutil.copytree(tuned.out, out)
    if not trials:
        for name in (journal.TRIALS, "tune.json", "tune.md", "pareto.png"):
            (out / name).unlink()
        shutil.rmtree(out / "best")
    return out


def args(tuned, out: Path, *extra: str, constraint: tuple[str, ...] = ("--max-drop", f"{MAX_DROP:g}")) -> list[str]:
    """The command line of the shared tune (the space file by its absolute path), on `out`."""
    return ["tune", "--space", str(tuned.space), "--out", str(out), "--time-budget", "5", *constraint, *extra]


def tune_again(tuned, out: Path):
    """The shared tune's arguments, through the API, on `out`: (result, every line it said)."""
    said: list[str] = []
    result = mfdeploy.tune(out=out, space=str(tuned.space), time_budget=5, max_drop=MAX_DROP, progress=said.append)
    return result, said


def trial_lines(said: list[str]) -> list[str]:
    """The progress lines of the trials that ran (`[i/n] #N key: state: ...`)."""
    return [line for line in said if line.startswith("[")]


def ran_keys(said: list[str]) -> list[str]:
    return [re.match(r"\[\d+/\d+\] #\d+ (.+?): ", line)[1] for line in trial_lines(said)]


def journal_lines(out: Path) -> list[bytes]:
    return (out / journal.TRIALS).read_bytes().splitlines(keepends=True)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---- the run ------------------------------------------------------------------------------------------------------

def test_a_tiny_tune_writes_the_journal_the_reports_and_the_pick(tuned):
    result, out = tuned.result, tuned.out
    assert {r["key"] for r in result.trials} == KEYS and sorted(r["number"] for r in result.trials) == [0, 1]
    assert all(r["state"] == "complete" and r["seconds"]["run_here"] for r in result.trials)
    # every trial was evaluated through the backend and precision it would be served with
    assert {r["key"]: r["quality"]["backend"] for r in result.trials} == {
        "multiflow r=0.5 fp32": "onnx", "multiflow r=0.5 int8": "onnx-int8"}
    assert len(trial_lines(tuned.said)) == 2 and trial_lines(tuned.said)[0].startswith("[1/2] #0 ")

    # trials.jsonl: one line per trial, each the record the API returned
    lines = journal_lines(out)
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(result.trials))

    front = [r["number"] for r in result.front]
    assert front and set(front) <= {0, 1} and result.pick["number"] in front
    assert result.pick["quality"]["drop_points"] <= MAX_DROP

    summary = json.loads((out / "tune.json").read_text())
    assert [t["key"] for t in summary["trials"]] == [r["key"] for r in result.trials]
    assert summary["front"] == front and summary["pick"]["number"] == result.pick["number"]
    assert (out / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    md = (out / "tune.md").read_text()
    front_section = md.split("## Pareto front")[1].split("## All trials")[0]
    for r in result.trials:
        assert (r["key"] in front_section) == (r["number"] in front)
    assert f"#{result.pick['number']} {result.pick['key']}" in md.split("## Pick")[1]
    assert f"    {summary['pick']['serve']}" in md.split("## Pick")[1]  # the serve command, as in tune.json


def test_best_is_a_complete_build_of_the_pick_with_a_serve_command(tuned):
    from mfdeploy.cli.reference import command

    best, pick = tuned.out / "best", tuned.result.pick
    built = json.loads((best / "build.json").read_text())
    assert (built["method"], built["ratio"]) == (pick["config"]["method"], pick["config"]["ratio"])
    assert (best / "onnx" / "vision.onnx").is_file() and (best / "onnx" / "text.onnx").is_file()
    int8 = pick["config"]["precision"] == "int8"
    assert (best / "onnx_int8" / "vision.onnx").is_file() or not int8
    chosen = json.loads((best / "tune_pick.json").read_text())
    assert chosen["trial"] == pick["number"] and chosen["key"] == pick["key"]
    serve = chosen["serve"].split()
    assert serve[:3] == ["mfdeploy", "serve", str(best)]
    assert serve[serve.index("--backend") + 1] == ("ort-int8" if int8 else "ort-cpu")
    command.make_context("mfdeploy", serve[1:])  # the command line parses as the CLI would take it


def test_the_pick_measures_the_same_when_evaluated_again(tuned):
    pick = tuned.result.pick
    backend = "onnx-int8" if pick["config"]["precision"] == "int8" else "onnx"
    again = mfdeploy.evaluate(tuned.out / "best", backend=backend)
    mean = statistics.fmean(again["tasks"].values())
    assert abs(mean - pick["quality"]["value"]) * 100 <= 0.5


# ---- the journal ---------------------------------------------------------------------------------------------------

def test_running_a_finished_tune_again_runs_no_trial(tuned, tmp_path, capsys):
    out = copy_run(tuned, tmp_path)
    before = journal_lines(out)
    # the space file by another path than the first run used (absolute, not relative): the same tune
    assert run_cli(args(tuned, out)) == 0
    err = capsys.readouterr().err
    assert "2 already done" in err and not trial_lines(err.splitlines())
    assert journal_lines(out) == before
    assert len(json.loads((out / "tune.json").read_text())["trials"]) == 2
    assert "- trials: 2 (2 complete)" in (out / "tune.md").read_text()


def test_deleting_the_last_line_runs_exactly_that_trial_again(tuned, tmp_path):
    out = copy_run(tuned, tmp_path)
    lines = journal_lines(out)
    (out / journal.TRIALS).write_bytes(b"".join(lines[:-1]))
    result, said = tune_again(tuned, out)
    assert ran_keys(said) == [json.loads(lines[-1])["key"]]
    after = journal_lines(out)
    assert after[:-1] == lines[:-1] and len(after) == len(lines)
    assert {r["key"] for r in result.trials} == KEYS


def test_a_line_cut_off_by_a_kill_is_named_and_the_next_trial_is_not_glued_to_it(tuned, tmp_path):
    out = copy_run(tuned, tmp_path)
    lines = journal_lines(out)
    (out / journal.TRIALS).write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    result, said = tune_again(tuned, out)
    warnings = [line for line in said if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{out / journal.TRIALS}: line {len(lines)}" in warnings[0]
    assert "cut off" in warnings[0]
    assert ran_keys(said) == [json.loads(lines[-1])["key"]]
    # the trial that ran again was written on a line of its own: the journal holds both trials
    seen: list[str] = []
    records = journal.read_records(out, seen.append)
    assert {r["key"] for r in records} == KEYS and len(seen) == 1


def test_a_damaged_line_in_the_journal_is_named_once_and_its_trial_runs_again(tuned, tmp_path):
    out = copy_run(tuned, tmp_path)
    lines = journal_lines(out)
    (out / journal.TRIALS).write_bytes(b"\x00\xff{garbage\n" + b"".join(lines[1:]))
    result, said = tune_again(tuned, out)
    warnings = [line for line in said if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{out / journal.TRIALS}: line 1 " in warnings[0] and "\n" not in warnings[0]
    assert ran_keys(said) == [json.loads(lines[0])["key"]]
    numbers = [r["number"] for r in result.trials]
    assert len(set(numbers)) == len(numbers) == 2  # the trial that ran again takes a number no kept trial has
    assert json.loads(journal_lines(out)[1]) == json.loads(lines[1])


def test_a_killed_tune_continues_where_it_stopped(tuned, tmp_path, capsys):
    out = copy_run(tuned, tmp_path, trials=False)
    command = [sys.executable, "-m", "mfdeploy.cli", *args(tuned, out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"})
    watchdog = threading.Timer(180, proc.kill)  # a tune that never prints its first trial fails, not hangs
    watchdog.start()
    killed = False
    try:
        for line in proc.stderr:
            if line.startswith("[1/"):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        proc.wait()
    finally:
        watchdog.cancel()
        proc.kill()
        proc.stderr.close()
    assert killed and proc.returncode == -signal.SIGKILL, "the tune ended before its first trial was reported"
    first = journal_lines(out)
    assert len(first) == 1 and json.loads(first[0])["state"] == "complete"

    assert run_cli(args(tuned, out)) == 0
    err = capsys.readouterr().err
    assert "1 already done" in err
    assert ran_keys(err.splitlines()) == sorted(KEYS - {json.loads(first[0])["key"]})
    after = journal_lines(out)
    assert len(after) == 2 and after[0] == first[0]
    assert (out / "best" / "tune_pick.json").is_file()


def test_other_settings_in_the_same_directory_are_refused(tuned, tmp_path, capsys):
    out = copy_run(tuned, tmp_path)
    before = journal_lines(out)
    assert run_cli(args(tuned, out, "--batch-size", "4")) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "different settings (batch_size: 8 there, 4 now)" in errors[0]
    assert "--force" in errors[0] and journal_lines(out) == before


def test_a_second_tune_in_a_locked_directory_is_refused_and_force_deletes_nothing(tuned, tmp_path):
    out = copy_run(tuned, tmp_path)
    before = journal_lines(out)
    with journal.DirLock(out):
        with pytest.raises(UserError, match=rf"another tune is running there \(pid {os.getpid()}\)"):
            journal.DirLock(out).__enter__()
        with pytest.raises(UserError, match="another tune is running there"):
            mfdeploy.tune(out=out, space=str(tuned.space), time_budget=5, force=True)
        with pytest.raises(UserError, match="another tune is running there"):
            mfdeploy.tune(out=out, pick=0)
        assert journal_lines(out) == before and (out / "best").is_dir()
    with journal.DirLock(out):  # released when its holder leaves
        pass


def test_force_refuses_a_tune_directory_holding_files_mfdeploy_did_not_write(tuned, tmp_path, capsys):
    out = copy_run(tuned, tmp_path)
    (out / "notes.md").write_text("mine")
    before = journal_lines(out)
    assert run_cli([*args(tuned, out), "--force"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: --force will not replace {out}: it holds files mfdeploy did not write (notes.md); move them out first"]
    assert (out / "notes.md").read_text() == "mine" and journal_lines(out) == before and (out / "best").is_dir()


def test_a_failed_trial_runs_again_and_a_damaged_dense_record_is_measured_again(tuned, tmp_path):
    """A trial that failed (here: the calibration file it needed, since put back) is not a finished one: a rerun
    runs it again, and its new record counts. A dense.json that parses but is not the dense evaluation (`{}`)
    is named and measured again, where it used to end the tune in a KeyError."""
    out = copy_run(tuned, tmp_path)
    lines = journal_lines(out)
    failed = {**json.loads(lines[-1]), "state": "failed", "reason": "mycal.jsonl: does not exist"}
    for key in ("quality", "speed", "size_mb", "build"):
        failed.pop(key, None)
    (out / journal.TRIALS).write_bytes(b"".join(lines[:-1]) + (json.dumps(failed) + "\n").encode())
    (out / "dense.json").write_text("{}")
    result, said = tune_again(tuned, out)
    assert f"tune: 1 trial(s) that failed before run again ({failed['key']})" in said
    assert any(line.startswith(f"warning: {out / 'dense.json'} is damaged") for line in said)
    assert ran_keys(said) == [failed["key"]]
    assert json.loads(journal_lines(out)[-1])["number"] == failed["number"] + 1  # the failed one's stays taken
    assert {r["key"]: r["state"] for r in journal.read_records(out, print)} == dict.fromkeys(KEYS, "complete")
    assert {r["key"] for r in result.trials} == KEYS and all(r["state"] == "complete" for r in result.trials)


@pytest.mark.slow
def test_force_starts_over(tuned, tmp_path, capsys):
    out = copy_run(tuned, tmp_path)
    (tmp_path / "one.toml").write_text(SPACE.replace('"fp32", "int8"', '"fp32"'))
    command = ["tune", "--space", str(tmp_path / "one.toml"), "--out", str(out), "--time-budget", "5",
               "--max-drop", "5"]
    assert run_cli(command) == 2  # another space: its trials would not compare
    assert "different settings (space:" in error_lines(capsys.readouterr().err)[0]
    assert run_cli([*command, "--force"]) == 0
    records = [json.loads(line) for line in journal_lines(out)]
    assert [(r["number"], r["key"]) for r in records] == [(0, "multiflow r=0.5 fp32")]
    assert not (out / "best" / "onnx_int8").exists()  # built again, without INT8 this time


# ---- constraints and --pick --------------------------------------------------------------------------------------

@pytest.mark.parametrize("constraint", [("--max-drop", "0.01"), ("--min-speedup", "100")])
def test_a_constraint_nothing_meets_names_the_closest_and_builds_nothing(tuned, tmp_path, capsys, constraint):
    out = copy_run(tuned, tmp_path)
    assert run_cli(args(tuned, out, constraint=constraint)) == 2
    err = capsys.readouterr().err
    errors = error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.match(rf"error: no candidate meets {constraint[0]} {constraint[1]}: closest was #\d ", errors[0])
    summary = json.loads((out / "tune.json").read_text())  # the reports are written all the same
    assert summary["pick"]["number"] is None and errors[0] == f"error: {summary['pick']['why']}"
    assert "No pick" in (out / "tune.md").read_text()
    assert not (out / "best").exists()  # the pick the first run made under other constraints is gone too


def test_pick_rebuilds_best_from_the_journal_without_searching(tuned, tmp_path, monkeypatch, capsys):
    out = copy_run(tuned, tmp_path)
    other = next(r for r in tuned.result.trials if r["number"] != tuned.result.pick["number"])
    before = journal_lines(out)
    monkeypatch.chdir(tmp_path)  # the space file was named relative to another directory
    assert run_cli(["tune", str(out), "--pick", str(other["number"])]) == 0
    assert not trial_lines(capsys.readouterr().err.splitlines()) and journal_lines(out) == before
    summary = json.loads((out / "tune.json").read_text())
    assert summary["pick"]["number"] == other["number"]
    assert summary["pick"]["why"] == f"chosen with --pick {other['number']}"
    chosen = json.loads((out / "best" / "tune_pick.json").read_text())
    assert chosen["trial"] == other["number"] and chosen["config"] == other["config"]
    assert (out / "best" / "build.json").is_file()


def test_pick_of_a_trial_that_is_not_complete_lists_the_complete_ones(tuned, tmp_path, capsys):
    out = copy_run(tuned, tmp_path)
    assert run_cli(["tune", str(out), "--pick", "7"]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert errors == [f"error: --pick 7: not a complete trial of {out} (complete: #0, #1)"]
    records = [json.loads(line) for line in journal_lines(out)]
    records[1].update(state="screened", reason="screened out: test")
    (out / journal.TRIALS).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_cli(["tune", str(out), "--pick", "1"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: --pick 1: not a complete trial of {out} (complete: #0)"]
    assert run_cli(["tune", str(tmp_path / "nothing"), "--pick", "0"]) == 2
    assert "no tune there" in error_lines(capsys.readouterr().err)[0]


@pytest.mark.parametrize("damage", ["method", "ratio", "nan", "number", "twin", "key"])
def test_a_journal_line_of_wrong_values_is_named_and_its_trial_runs_again(tuned, tmp_path, damage):
    """Valid JSON with values the space cannot hold ended in Optuna's traceback ('nosuch' not in (...), NaN);
    a negative or repeated trial number, or a key that is not its configuration's, was taken as it was."""
    out = copy_run(tuned, tmp_path)
    first, second = (json.loads(line) for line in journal_lines(out))
    if damage == "method":
        first["config"]["method"] = "nosuch"
    elif damage == "ratio":
        first["config"]["ratio"] = "0.5"
    elif damage == "nan":
        first["quality"]["retention"] = float("nan")
    elif damage == "number":
        first["number"] = -5
    elif damage == "key":
        first["key"] = second["key"] + " and more"
    damaged = [first, second] if damage != "twin" else [second, {**first, "number": second["number"]}]
    (out / journal.TRIALS).write_text("".join(json.dumps(r) + "\n" for r in damaged))
    result, said = tune_again(tuned, out)
    warnings = [line for line in said if line.startswith("warning:")]
    assert len(warnings) == 1 and str(out / journal.TRIALS) in warnings[0] and "runs again" in warnings[0], said
    assert ran_keys(said) == [tuned.result.trials[0]["key"]], said
    numbers = [r["number"] for r in result.trials]
    assert len(set(numbers)) == len(numbers) == 2 and min(numbers) >= 0


def test_a_settings_file_of_another_shape_and_a_damaged_pick_build_are_named(tuned, tmp_path, capsys):
    """`[1]` in tune_settings.json gave an AttributeError traceback; a pick whose work build lost files was
    copied into best/ and reported as built."""
    out = copy_run(tuned, tmp_path)
    (out / journal.SETTINGS).write_text("[1]")
    assert run_cli(args(tuned, out)) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {out / journal.SETTINGS}: unreadable (a JSON list, not an object); use another --out, or --force "
        "to start over"]
    out = copy_run(tuned, tmp_path / "again")
    pick = tuned.result.pick
    shutil.rmtree(out / pick["build"] / "onnx")
    assert run_cli(["tune", str(out), "--pick", str(pick["number"])]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: the build of #{pick['number']} {pick['key']} was changed after tune measured "
                           f"it: {out / pick['build'] / 'onnx'}/"), line
    assert "re-run the tune with --force to measure again" in line
    assert json.loads((out / "best" / "tune_pick.json").read_text())["trial"] == pick["number"]  # best/ as it was
