"""Faults a new user hit (a ninth round, b): the artifacts read by other tools and from other folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import run_cli


def test_an_export_of_a_relative_checkpoint_path_is_served_from_any_folder(tiny_clip_dir, tmp_path, monkeypatch):
    """`mfdeploy export b1/pruned --out ex1` recorded `"source": "b1/pruned"`; `mfdeploy serve /abs/ex1` run from
    another folder then said the model "is not in the Hugging Face cache here: download it with huggingface-cli
    download b1/pruned"."""
    from mfdeploy.server.source import _checkpoint

    work = tmp_path / "work"
    shutil.copytree(tiny_clip_dir, work / "ckpt" / "pruned")
    monkeypatch.chdir(work)
    assert run_cli(["export", "ckpt/pruned", "--out", "ex"]) == 0
    source = json.loads((work / "ex" / "export.json").read_text())["model"]["source"]
    assert source == str((work / "ckpt" / "pruned").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Path(_checkpoint(source, work / "ex")) == (work / "ckpt" / "pruned").resolve()
