"""Tenth hunt, the lead's own finds."""

from __future__ import annotations

from mfdeploy.tuning.journal import _same_path


def test_a_tune_record_with_a_home_relative_path_matches_the_same_file(tmp_path, monkeypatch):
    """`_same_path` checked `Path(old).exists()` before expanding `~`: an older tune's `~/pairs.jsonl` never matched
    the absolute path a resume records now, and the resume was refused as "different settings"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    assert _same_path("~/pairs.jsonl", str(data))
    assert not _same_path("~/other.jsonl", str(data))
