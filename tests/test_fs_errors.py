"""Filesystem errors end in one line naming the path and the cause, exit 2, and leave nothing (issue 31, item 4).

Each errno class goes through the real CLI: an output under a regular file (ENOTDIR) and under /proc (ENOENT)
for every verb that writes; a folder without write permission (EACCES) in a child process that lost root's
override of permission bits; a full disk (ENOSPC) on a small tmpfs where one can be mounted; and, for every
class, a write refused in the middle of the work (the filesystem call made to fail with the real errno).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from mfdeploy.artifacts.io import write_json
from mfdeploy.errors import WriteError

FAST_CALIB = ["--calib", "shapes", "--calib-samples", "8"]


@pytest.fixture()
def build(tiny_build) -> Path:
    """A real tiny build (no --int8): the input of quantize, triton, engine and bench; shared, never changed here."""
    return tiny_build


def writing_verbs(model: Path, build: Path, target: Path) -> dict[str, list[str]]:
    """Every verb that writes, with `target` as what it writes (a folder, or a file for --json)."""
    prune = ["--model", str(model), "--method", "magnitude", "--ratio", "0.5"]
    return {
        "prune": ["prune", *prune, "--out", str(target)],
        "export": ["export", str(model), "--out", str(target)],
        "build": ["build", *prune, *FAST_CALIB, "--out", str(target)],
        "quantize": ["quantize", str(build), *FAST_CALIB, "--out", str(target)],
        "triton": ["triton", str(build), "--out", str(target)],
        "engine": ["engine", str(build / "onnx"), "--max-batch", "2", "--out", str(target)],
        "eval --json": ["eval", str(model), "--images", "8", "--pairs", "8", "--json", str(target)],
        "bench --json": ["bench", str(build), "--backends", "ort-cpu", "--towers", "text", "--batch-sizes", "1",
                         "--warmup", "0", "--iters", "1", "--min-time", "0", "--no-dense", "--json", str(target)],
    }


VERBS = list(writing_verbs(Path(), Path(), Path()))


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def one_error_line(capsys) -> str:
    """The error line a failed command ended in (after the progress lines of the work it did)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    assert lines[-1].startswith("error: cannot write "), err
    return lines[-1]


@pytest.mark.parametrize("verb", VERBS)
def test_output_under_a_regular_file(verb, tiny_clip_dir, build, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    target = tmp_path / "afile" / "out"
    before, build_before = snapshot(tmp_path), snapshot(build)
    assert run_cli(writing_verbs(tiny_clip_dir, build, target)[verb]) == 2
    line = one_error_line(capsys)
    assert line == f"error: cannot write {target}: {tmp_path / 'afile'} is not a directory (errno {errno.ENOTDIR})"
    assert snapshot(tmp_path) == before and snapshot(build) == build_before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc")
@pytest.mark.parametrize("verb", VERBS)
def test_output_under_proc(verb, tiny_clip_dir, build, capsys):
    target = Path("/proc/mfdeploy-test-output")
    build_before = snapshot(build)
    assert run_cli(writing_verbs(tiny_clip_dir, build, target)[verb]) == 2
    assert one_error_line(capsys) == f"error: cannot write {target}: No such file or directory (errno {errno.ENOENT})"
    assert snapshot(build) == build_before


# --- a folder without write permission: a real EACCES -----------------------------------------------------------

def _without_root_override() -> None:
    """In the child: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so root obeys permission bits as anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # PR_CAPBSET_DROP: what the exec'd program may never have
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _as_ordinary_user() -> dict:
    if os.geteuid() != 0:
        return {}
    try:
        subprocess.run([sys.executable, "-c", "0"], preexec_fn=_without_root_override, check=True)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot drop root's permission override here (no CAP_SETPCAP)")
    return {"preexec_fn": _without_root_override}


@pytest.mark.parametrize("verb", ["prune", "export", "eval --json"])
def test_folder_without_write_permission(verb, tiny_clip_dir, tmp_path):
    how = _as_ordinary_user()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    target = locked / ("r.json" if verb.endswith("--json") else "out")
    argv = writing_verbs(tiny_clip_dir, Path("unused"), target)[verb]
    proc = subprocess.run([sys.executable, "-m", "mfdeploy.cli", *argv], capture_output=True, text=True,
                          timeout=300, **how)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1] == f"error: cannot write {target}: Permission denied (errno {errno.EACCES})", proc.stderr
    assert list(locked.iterdir()) == []


def test_bench_into_a_read_only_build(build, tmp_path):
    """bench writes its reports into the build: a read-only build fails before the timing, not after it."""
    how = _as_ordinary_user()
    copy = tmp_path / "read-only build"
    shutil.copytree(build, copy)
    copy.chmod(0o555)
    argv = writing_verbs(Path("unused"), copy, tmp_path / "rows.json")["bench --json"]
    try:
        proc = subprocess.run([sys.executable, "-m", "mfdeploy.cli", *argv], capture_output=True, text=True,
                              timeout=300, **how)
    finally:
        copy.chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: cannot write {copy / 'bench.json'}: Permission denied "
                                                    f"(errno {errno.EACCES})")
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in build.iterdir())


# --- a full disk: a real ENOSPC on a small tmpfs ------------------------------------------------------------------

@pytest.fixture()
def small_disk(tmp_path):
    """A 96 KiB tmpfs (mounting needs CAP_SYS_ADMIN: skipped without it)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("verb", ["prune", "export", "build"])
def test_full_disk(verb, small_disk, tiny_clip_dir, capsys):
    target = small_disk / "out"
    assert run_cli(writing_verbs(tiny_clip_dir, Path("unused"), target)[verb]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: cannot write {target}") and line.endswith(
        f": No space left on device (errno {errno.ENOSPC})"), line
    assert list(small_disk.iterdir()) == []  # the temporary folder went with its partial files


# --- a write refused in the middle of the work, every errno class ---------------------------------------------------

REFUSALS = [errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO]


@pytest.mark.parametrize("code", REFUSALS, ids=errno.errorcode.get)
def test_prune_write_refused_midway(code, tiny_clip_dir, tmp_path, monkeypatch, capsys):
    """prune.json is refused after masks and the checkpoint were written: the error names the final path."""
    import mfdeploy.pipelines.prune as pipeline

    def refused(path, data, **kwargs):
        Path(path).write_text("partial")
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(pipeline, "write_json", refused)
    out = tmp_path / "p"
    assert run_cli(writing_verbs(tiny_clip_dir, Path("unused"), out)["prune"]) == 2
    assert one_error_line(capsys) == f"error: cannot write {out / 'prune.json'}: {os.strerror(code)} (errno {code})"
    assert list(tmp_path.iterdir()) == []


def test_export_lean_writer_out_of_space(tiny_clip_dir, tmp_path, monkeypatch, capsys):
    """The streamed ONNX writer's `f.write` fails with ENOSPC (no file name in the error): the output is named."""
    import mfdeploy.exporting.onnx_export as onnx_export

    real = onnx_export.write_model

    def full(model, tensors, path, external, **kwargs):
        real(model, tensors, path, external, **kwargs)  # the bytes land, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx_export, "write_model", full)
    out = tmp_path / "e"
    assert run_cli(["export", str(tiny_clip_dir), "--out", str(out)]) == 2
    assert one_error_line(capsys) == f"error: cannot write {out}: No space left on device (errno {errno.ENOSPC})"
    assert list(tmp_path.iterdir()) == []


def test_safetensors_out_of_space_is_one_line(tiny_clip_dir, tmp_path, monkeypatch, capsys):
    """safetensors (Rust) reports a full disk as text, `(os error 28)`: still the one line, with the errno."""
    from safetensors import SafetensorError

    import mfdeploy.pipelines.prune as pipeline

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(pipeline, "save_masks", full)
    out = tmp_path / "p"
    assert run_cli(writing_verbs(tiny_clip_dir, Path("unused"), out)["prune"]) == 2
    assert one_error_line(capsys) == f"error: cannot write {out}: No space left on device (errno {errno.ENOSPC})"
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_removes_the_folders_it_made(tmp_path, monkeypatch):
    """`eval --json a/b/r.json` on a full disk: neither the file nor a/ and a/b/ stay behind."""
    from pathlib import Path as P

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(P, "write_text", full)
    with pytest.raises(WriteError) as info:
        write_json(tmp_path / "a" / "b" / "r.json", {"x": 1})
    assert str(info.value) == f"cannot write {tmp_path / 'a' / 'b' / 'r.json'}: No space left on device (errno 28)"
    assert list(tmp_path.iterdir()) == []


def test_any_other_filesystem_error_is_one_line(tmp_path, monkeypatch, capsys):
    """The CLI's last resort: an `OSError` no command explained still ends in one line naming the path."""
    import mfdeploy.models as models

    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "config.json"))

    monkeypatch.setattr(models, "load", unreadable)
    assert run_cli(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'config.json'}: Permission denied (errno {errno.EACCES})"
