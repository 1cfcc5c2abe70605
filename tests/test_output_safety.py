"""--force never deletes what mfdeploy did not write; SIGTERM leaves nothing behind; outputs get normal modes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli

from mfdeploy.artifacts.io import FILE_LIST, atomic_dir, check_out_dir, foreign_files
from mfdeploy.errors import UserError


def prune_argv(model: Path, out: str) -> list[str]:
    return ["prune", "--model", str(model), "--method", "magnitude", "--ratio", "0.5", "--out", out, "--force"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.mark.parametrize("out", [".", "..", "./", "sub/.."])
def test_force_refuses_the_current_directory_and_its_parents(out, tiny_clip_dir, tmp_path, monkeypatch, capsys):
    scratch = tmp_path / "scratch"
    (scratch / "sub").mkdir(parents=True)
    (scratch / "sentinel.txt").write_text("mine")
    (tmp_path / "parent-sentinel.txt").write_text("mine too")
    before, before_parent = snapshot(scratch), snapshot(tmp_path)
    monkeypatch.chdir(scratch)
    assert run_cli(prune_argv(tiny_clip_dir, out)) == 2
    err = capsys.readouterr().err
    assert "current directory or one of its parents" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(scratch) == before and snapshot(tmp_path) == before_parent


def test_force_refuses_home_and_root(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="home directory"):
        check_out_dir(home, force=True)
    with pytest.raises(UserError, match="root|current directory"):
        check_out_dir(Path("/"), force=True)
    assert (home / ".bashrc").read_text() == "x"


def test_force_refuses_a_directory_mfdeploy_did_not_write(tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"\xff\xd8")
    assert run_cli(prune_argv(tiny_clip_dir, str(out))) == 2
    assert "mfdeploy did not write it" in capsys.readouterr().err
    assert (out / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_force_refuses_a_file_and_a_symlink(tmp_path):
    (tmp_path / "file").write_text("data")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UserError, match="not a directory"):
        check_out_dir(tmp_path / "file", force=True)
    with pytest.raises(UserError, match="symbolic link"):
        check_out_dir(tmp_path / "link", force=True)


def test_force_replaces_an_empty_directory_and_its_own_output(tiny_clip_dir, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    assert run_cli(prune_argv(tiny_clip_dir, str(out))) == 0
    listed = set((out / FILE_LIST).read_text().split())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert listed == on_disk and "prune.json" in listed and "pruned/model.safetensors" in listed
    assert run_cli(prune_argv(tiny_clip_dir, str(out))) == 0  # its own output: replaced
    assert foreign_files(out) == []


def test_force_names_the_files_a_user_added(tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "p"
    assert run_cli(prune_argv(tiny_clip_dir, str(out))) == 0
    (out / "notes.md").write_text("my notes")
    (out / "pruned" / "extra").mkdir()
    (out / "pruned" / "extra" / "data.bin").write_bytes(b"1")
    before = snapshot(out)
    assert run_cli(prune_argv(tiny_clip_dir, str(out))) == 2
    err = capsys.readouterr().err
    assert "notes.md" in err and "pruned/extra/data.bin" in err and "move them out" in err
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_files_later_commands_add_are_mfdeploy_s(tmp_path):
    out = tmp_path / "b"
    with atomic_dir(out) as tmp:
        (tmp / "build.json").write_text("{}")
        (tmp / "engines").mkdir()
        (tmp / "engines" / "engine.json").write_text("{}")
    for name in ("bench.json", "bench.md", "bench.png", "bench-20260101T000000Z.json", "engines/vision.plan"):
        (out / name).write_text("x")
    assert foreign_files(out) == []
    (out / "engines" / "mine.txt").write_text("x")
    (out / "stray.plan").mkdir()  # a folder named like an engine file is still the user's
    (out / "stray.plan" / "f").write_text("x")
    assert foreign_files(out) == ["engines/mine.txt", "stray.plan/f"]


def test_directory_written_before_the_file_list_existed(tmp_path):
    """Older mfdeploy versions wrote no file list: the manifest's own artifact list stands in for it."""
    out = tmp_path / "old"
    (out / "onnx").mkdir(parents=True)
    (out / "onnx" / "vision.onnx").write_bytes(b"x")
    (out / "build.json").write_text(json.dumps({"artifacts": {"onnx/vision.onnx": {"sha256": "0"}}}))
    check_out_dir(out, force=True)
    (out / "notes.md").write_text("x")
    with pytest.raises(UserError, match="notes.md"):
        check_out_dir(out, force=True)


def test_outputs_have_normal_permissions(tiny_clip_dir, tmp_path):
    old = os.umask(0o022)
    try:
        assert run_cli(prune_argv(tiny_clip_dir, str(tmp_path / "p"))) == 0
    finally:
        os.umask(old)
    out = tmp_path / "p"
    for rel in ("masks.safetensors", "pruned/model.safetensors", "prune.json", "pruned/config.json"):
        assert stat.S_IMODE((out / rel).stat().st_mode) == 0o644, rel
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "pruned").stat().st_mode) == 0o755


def test_sigterm_during_build_leaves_nothing(tiny_clip_dir, shapes_pairs_jsonl, tmp_path):
    """A container stop sends SIGTERM: the build's temporary directory goes, as on Ctrl-C."""
    out = tmp_path / "build"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfdeploy.cli", "build", "--model", str(tiny_clip_dir), "--calib",
         str(shapes_pairs_jsonl), "--eval", "shapes", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".build.tmp-*")):
        assert proc.poll() is None, f"build ended before it could be stopped: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], [p.name for p in tmp_path.iterdir()]


def test_an_output_written_inside_another_is_mfdeploy_s(tmp_path):
    """`mfdeploy quantize BUILD --out BUILD/onnx_q` (its own file list) does not make BUILD foreign."""
    out = tmp_path / "b"
    with atomic_dir(out) as tmp:
        (tmp / "build.json").write_text("{}")
    with atomic_dir(out / "onnx_q") as tmp:
        (tmp / "quantize.json").write_text("{}")
        (tmp / "vision.onnx").write_text("x")
    assert foreign_files(out) == []
    (out / "onnx_q" / "mine.txt").write_text("x")
    assert foreign_files(out) == ["onnx_q/mine.txt"]
