"""`mfdeploy tune` without a model: the search space, the first rung's two screening rules (on synthetic
records), and the command lines tune refuses before it measures anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli

from mfdeploy.errors import UserError
from mfdeploy.tuning import measure, search
from mfdeploy.tuning.config import TuneConfig
from mfdeploy.tuning.records import Constraints
from mfdeploy.tuning.space import BACKEND_PRECISIONS, METHODS, Candidate, Space, load_space

# ---- the space ----------------------------------------------------------------------------------------------------


def keys(space: Space) -> list[str]:
    return [c.key for c in space.candidates()]


def test_the_default_space_holds_every_method_ratio_and_precision_of_the_backend():
    space = load_space("default", "ort-cpu")
    assert space.methods == METHODS and space.precisions == BACKEND_PRECISIONS["ort-cpu"]
    assert len(set(keys(space))) == space.size() == \
        len(METHODS) * len(space.ratios) * len(space.distill_steps) * len(space.precisions)
    assert load_space("default", "openvino").precisions == ("fp32", "bf16", "int8")
    assert load_space("default", "ort-int8").precisions == ("int8",)  # the alias fixes the precision


def test_the_quick_space_is_multiflow_and_mope_with_a_coarse_mope():
    space = load_space("quick", "ort-cpu")
    assert space.methods == ("multiflow", "mope") and space.mope == {"neuron_group": 256}
    assert space.calib_samples == 32 and space.size() == 2 * len(space.ratios) * 2


def test_a_toml_space_narrows_the_default(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('methods = ["wanda", "mope"]\nratios = [0.5]\nbudgets = ["default", "global"]\n'
                    'patterns = ["none"]\nprecisions = ["int8"]\ndistill_steps = [0]\n'
                    '[mope]\nneuron_group = 128\n[calibration]\nsamples = 16\n')
    space = load_space(str(path), "ort-cpu")
    # MoPE has its own budget: the budgets list multiplies wanda only
    assert keys(space) == ["wanda r=0.5 int8", "wanda r=0.5 budget=global int8", "mope r=0.5 int8"]
    assert space.mope == {"neuron_group": 128} and space.calib_samples == 16
    assert Space.from_description(space.describe()) == space  # --pick rebuilds it from tune_settings.json


BAD_SPACES = [
    ('methods = ["prune-it-all"]', "unknown method 'prune-it-all'"),
    ('methods = "multiflow"', "methods must be a list"),
    ("ratios = [1.5]", "ratio 1.5 must be between 0 and 1"),
    ("ratios = [0]", "ratio 0 must be between 0 and 1"),
    ('precisions = ["fp8"]', "fp8: ort-cpu has no fp8 kernels"),
    ('precisions = ["bf16"]', "precision 'bf16' is not one ort-cpu runs here (it runs fp32, int8)"),
    ('patterns = ["2:4"]', "pattern 2:4 only pays where the backend runs sparse kernels, and ort-cpu does not"),
    ('budgets = ["everywhere"]', "unknown budget 'everywhere'"),
    ("methods = []", "methods is empty"),
    ('method = ["multiflow"]', "unknown key 'method'"),
    ("mope = 3", "mope must be a table"),
    ("[mope]\ngroup = 3", "[mope] 'group' is not an option"),
    ("methods = [", "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD_SPACES, ids=[m for _, m in BAD_SPACES])
def test_a_bad_space_file_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text + "\n")
    with pytest.raises(UserError) as e:
        load_space(str(path), "ort-cpu")
    assert str(e.value).startswith(f"--space {path}: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("spec,backend,message", [
    ("missing.toml", "ort-cpu", "--space missing.toml: no such file"),
    ("fastest", "ort-cpu", "--space fastest: expected default, quick or a .toml file"),
    ("default", "ort-int8", None),
])
def test_a_space_that_is_no_file_or_name_is_refused(spec, backend, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if message is None:  # a precision the alias rules out
        path = tmp_path / "s.toml"
        path.write_text('precisions = ["fp32"]\n')
        with pytest.raises(UserError, match=r"--backend ort-int8 takes int8 candidates only: drop fp32 from "
                                            r"precisions, or use --backend ort-cpu"):
            load_space(str(path), backend)
        return
    with pytest.raises(UserError, match=message):
        load_space(spec, backend)


def test_unstructured_candidates_share_the_dense_shapes_and_mope_has_its_own():
    a, b = Candidate("multiflow", 0.5, "fp32"), Candidate("wanda", 0.75, "fp32", budget="global")
    assert a.shapes_key("ort-cpu") == b.shapes_key("ort-cpu") == "dense shapes fp32"
    assert a.shapes_key("ort-cpu") != Candidate("multiflow", 0.5, "int8").shapes_key("ort-cpu")
    m5, m7 = Candidate("mope", 0.5, "fp32"), Candidate("mope", 0.75, "fp32")
    assert len({m5.shapes_key("ort-cpu"), m7.shapes_key("ort-cpu"), a.shapes_key("ort-cpu")}) == 3
    # one pruned model serves every precision: the prune key leaves the precision out, the key does not
    int8 = Candidate("multiflow", 0.5, "int8")
    assert a.prune_key == int8.prune_key and a.key != int8.key
    assert a.prune_key != Candidate("multiflow", 0.5, "fp32", distill_steps=100).prune_key


# ---- screening ----------------------------------------------------------------------------------------------------

DENSE = {"tasks": {"a": 0.9, "b": 0.9}}


def make_search(tmp_path: Path, records=(), max_drop: float = 1.0) -> search.Search:
    cfg = TuneConfig(out=tmp_path, backend="torch", constraints=Constraints(max_drop=max_drop))
    space = Space(name="t", methods=("multiflow", "wanda", "mope"), ratios=(0.5, 0.75), precisions=("fp32", "bf16"))
    found = search.Search(cfg, space, "torch", "shapes", tmp_path, list(records), say=lambda m: None)
    found.dense = {"screen": DENSE, "full": DENSE}
    return found


def screened(number, cand: Candidate, drop: float, state: str = "complete") -> dict:
    return {"number": number, "key": cand.key, "config": cand.config(), "state": state,
            "screen": {"drop_points": drop}}


def test_a_candidate_is_dominated_only_by_a_finished_trial_as_fast_and_clearly_better(tmp_path):
    best = Candidate("multiflow", 0.5, "fp32")
    found = make_search(tmp_path, [screened(0, best, 1.0)])
    slack = search.SCREEN_SLACK
    same_speed = Candidate("wanda", 0.75, "fp32")  # unstructured on a dense backend: the same shapes
    reason = found._dominated(same_speed, {"drop_points": 1.0 + slack + 0.5})
    assert reason and "#0 multiflow r=0.5 fp32" in reason and "same shapes and precision" in reason
    assert found._dominated(same_speed, {"drop_points": 1.0 + slack - 0.5}) is None  # within the slack
    assert found._dominated(Candidate("wanda", 0.75, "bf16"), {"drop_points": 50.0}) is None  # other precision
    assert found._dominated(Candidate("mope", 0.75, "fp32"), {"drop_points": 50.0}) is None  # other shapes
    assert found._dominated(same_speed, None) is None
    for state in ("screened", "failed"):  # only a finished trial rules others out
        other = make_search(tmp_path, [screened(0, best, 1.0, state)])
        assert other._dominated(same_speed, {"drop_points": 50.0}) is None


@pytest.fixture()
def fake_measure(monkeypatch):
    """The build, evaluation and timing a trial runs, replaced: the build runs its screen stage on a stand-in
    model; every evaluation scores `accuracy[0]` on both tasks."""
    import mfdeploy.pipelines.build as build

    calls = {"builds": 0}
    accuracy = [0.9]

    def run_build(cfg, extra=()):
        calls["builds"] += 1
        state = type("State", (), {"model": lambda self, name: f"{name} model"})()
        for _, stage in extra:
            stage.run(state)
        return {}

    monkeypatch.setattr(build, "run_build", run_build)
    monkeypatch.setattr(measure, "evaluate", lambda *a, **k: {"tasks": {"a": accuracy[0], "b": accuracy[0]}})
    monkeypatch.setattr(measure, "time_candidate", lambda *a, **k: {"speedup": 1.0, "shared_with": None})
    return calls, accuracy


def test_a_first_rung_drop_far_outside_the_bound_stops_the_candidate_before_export(tmp_path, fake_measure):
    calls, accuracy = fake_measure
    found = make_search(tmp_path, max_drop=1.0)
    far = search.FAR * (1.0 + search.SCREEN_SLACK)  # 9 points
    accuracy[0] = 0.9 - (far + 0.5) / 100
    record = found._measure(Candidate("multiflow", 0.75, "fp32"))
    assert record["state"] == "screened" and record["screen"]["far"]
    assert "over 3x (--max-drop 1 + 2)" in record["reason"] and "quality" not in record
    found._add(record)
    # the same pruned model at another precision: stopped on the first one's screen, without a build
    again = found._measure(Candidate("multiflow", 0.75, "bf16"))
    assert again["state"] == "screened" and "(the same pruned model as #0)" in again["reason"]
    assert calls["builds"] == 1 and again["number"] == 1

    accuracy[0] = 0.9 - (far - 0.5) / 100  # just inside: measured in full
    record = found._measure(Candidate("wanda", 0.75, "fp32"))
    assert record["state"] == "complete" and not record["screen"].get("far")
    assert record["quality"]["drop_points"] == pytest.approx(far - 0.5)


def test_past_the_time_estimate_only_a_candidate_whose_build_is_made_still_runs(tmp_path, fake_measure):
    """A trial took 1000 s and 10 s are left: the other precision of the same pruned model (built) still runs;
    a candidate that needs a build of its own stops the search, and nothing is journalled for it."""
    import time

    from mfdeploy.artifacts.layout import BUILD_MANIFEST

    calls, _ = fake_measure
    cfg = TuneConfig(out=tmp_path, backend="torch", constraints=Constraints(max_drop=1.0), time_budget_min=1)
    space = Space(name="t", methods=("multiflow",), ratios=(0.5,), precisions=("fp32", "bf16"))
    done = Candidate("multiflow", 0.5, "fp32")
    record = {"number": 0, "key": done.key, "config": done.config(), "state": "complete",
              "quality": {"retention": 1.0}, "speed": {"speedup": 1.0},
              "seconds": {"run_here": True, "build": 900.0, "total": 1000.0}}
    found = search.Search(cfg, space, "torch", "shapes", tmp_path, [record], say=lambda m: None)
    built = found._build_path(done)
    built.mkdir(parents=True)
    (built / BUILD_MANIFEST).write_text("{}")
    found.run(time.monotonic() - 50)  # 10 s of the 60 left
    assert [r["key"] for r in found.records] == [done.key, "multiflow r=0.5 bf16"] and calls["builds"] == 0
    assert found.stopped == "every candidate of the space was measured"

    other = tmp_path / "other"
    other.mkdir()
    found = search.Search(cfg, space, "torch", "shapes", other, [record], say=lambda m: None)  # nothing built
    found.run(time.monotonic() - 50)
    assert len(found.records) == 1 and calls["builds"] == 0
    assert "the next candidate needs a build" in found.stopped
    assert not (other / "trials.jsonl").exists()


# ---- command lines tune refuses ------------------------------------------------------------------------------------

def test_tune_is_part_of_the_python_api():
    import mfdeploy
    from mfdeploy import api

    assert "tune" in mfdeploy.__all__ and mfdeploy.tune is api.tune


def test_tune_help_names_its_options(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert run_cli(["tune", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--space", "--backend", "--max-drop", "--min-speedup", "--max-latency-ms", "--max-size-mb",
                   "--time-budget", "--pick", "--out", "--eval", "--force"):
        assert option in text


@pytest.mark.parametrize("argv,message", [
    (["--backend", "trt"], "--backend trt: tune evaluates every candidate through the backend it times and can "
                           "drive ort-cpu, openvino, torch, torch-cuda, ort-int8, openvino-int8"),
    (["--max-drop", "-1"], "--max-drop -1.0: must be 0 or more"),
    (["--batch-size", "0"], "--batch-size 0: must be positive"),
    (["--space", "fastest"], "--space fastest: expected default, quick or a .toml file"),
    (["--seed", "-1"], "--seed -1: must be a whole number from 0 to 4294967295"),  # was Optuna's traceback
    (["--seed", "4294967296"], "--seed 4294967296: must be a whole number from 0 to 4294967295"),
    (["--out", "{tmp}/typo/t"], "{tmp}/typo: parent directory does not exist"),  # as every --out
])
def test_a_bad_option_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run_cli(["tune", "--out", str(tmp_path / "t"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.replace('{tmp}', str(tmp_path))}") and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_is_not_bundled_needs_eval_data(tmp_path, capsys, tiny_clip_dir):
    assert run_cli(["tune", "--model", str(tiny_clip_dir), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --eval DATA is needed for {tiny_clip_dir}") and len(err.splitlines()) == 1
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("argv,message", [
    (["DIR"], "a directory argument goes with --pick"),
    (["--pick", "0"], "--pick N needs the tune directory"),
])
def test_a_directory_goes_with_pick_and_pick_with_a_directory(tmp_path, capsys, argv, message):
    argv = [str(tmp_path) if a == "DIR" else a for a in argv]
    assert run_cli(["tune", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_directory_that_holds_something_else_is_not_a_tune_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert run_cli(["tune", "--out", str(tmp_path), "--force"]) == 2
    assert "not empty and not a tune directory" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_tune_killed_before_its_settings_were_written_is_resumed_not_refused(tmp_path):
    """A kill between taking the lock and writing tune_settings.json leaves the lock (and perhaps the settings'
    temporary folder): the directory is still a tune's, and a rerun goes on in it."""
    from mfdeploy.tuning import journal
    from mfdeploy.tuning.run import _prepare_out

    out = tmp_path / "t"
    out.mkdir()
    (out / journal.LOCK).write_text("12345\n")
    (out / f".{journal.SETTINGS}.tmp-abc").mkdir()
    assert _prepare_out(out) == out
    (out / "notes.txt").write_text("mine")  # anything else: not ours
    with pytest.raises(UserError, match="not empty and not a tune directory"):
        _prepare_out(out)
