"""Faults a new user hit (a sixth defect hunt): each ends in one line naming it, before the slow work and
before anything is written."""

from __future__ import annotations

import pytest
from helpers import run_cli

from mfdeploy.errors import UserError
from mfdeploy.exporting.spec import MIN_OPSET, check_opset, max_opset


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]  # stage lines
    assert len(lines) == 1, err
    return lines[0]


# ---- options that fail only once the model is loaded --------------------------------------------------------------

def test_an_opset_the_exporter_cannot_write_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """`export --opset 99` loaded the model and traced a tower before torch said it could not write opset 99."""
    newest = max_opset()
    assert newest is not None and newest >= MIN_OPSET  # torch 2.13 names its exporter's newest opset
    check_opset(newest)  # the newest one is fine
    with pytest.raises(UserError, match=rf"^opset {newest + 1} is newer than torch's torchscript exporter writes "
                                        rf"\(up to {newest}\): use --opset {MIN_OPSET}-{newest}$"):
        check_opset(newest + 1)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("mfdeploy.models.load", no_load)
    assert run_cli(["export", "--opset", "99", "--out", str(tmp_path / "e")]) == 2
    assert _one_error(capsys).startswith("error: opset 99 is newer than torch's torchscript exporter writes")
    assert not (tmp_path / "e").exists()


def test_include_globs_that_match_no_layer_fail_at_the_load_stage(tmp_path, capsys):
    """`build --include 'nomatch*'` evaluated and exported the dense model first (26 s on the bundled model,
    minutes on a large one); the message now shows what a layer's name looks like."""
    assert run_cli(["build", "--include", "nomatch*", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    stages = [line.split()[1] for line in err.splitlines() if line.startswith("[")]
    assert stages == ["load"], err  # no stage after it started
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith("error: no prunable layers left after --include/--exclude (of 48, named like "
                           "vision_model.encoder.layers.0.self_attn.q_proj)"), line
    assert not (tmp_path / "b").exists()


# ---- the Python API and the data options ----------------------------------------------------------------------------

def test_one_glob_given_as_a_string_is_one_glob():
    """`prune(model, include="*q_proj")` pruned by the letters '*', 'q', '_', ... (`list("*q_proj")`)."""
    import copy

    import mfdeploy

    model = mfdeploy.load()
    one = mfdeploy.prune(copy.deepcopy(model), ratio=0.5, method="magnitude", include="*q_proj")
    listed = mfdeploy.prune(copy.deepcopy(model), ratio=0.5, method="magnitude", include=["*q_proj"])
    assert one.record["include"] == ["*q_proj"] and sorted(one.masks) == sorted(listed.masks)
    assert len(one.masks) == 8 and all(name.endswith("q_proj.weight") for name in one.masks)
    with pytest.raises(UserError, match=r"^exclude: a glob or a list of globs \(strings\), got \[3\]$"):
        mfdeploy.prune(copy.deepcopy(model), ratio=0.5, method="magnitude", exclude=[3])


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_data_option_is_not_the_current_folder(value, tmp_path, monkeypatch):
    """`eval --data ''` read the current folder as a folder of classes (and scored its sub-folders)."""
    from mfdeploy.eval.datasets import resolve_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match=r"^--data is empty: give 'shapes', a JSONL file or an image folder$"):
        resolve_data(value)
