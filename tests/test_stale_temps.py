"""`kill -9` leftovers: temporary folders name their owner; a later run removes those of dead owners only
(issue 31, item 5)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mfdeploy.artifacts.io import atomic_dir
from mfdeploy.artifacts.layout import TEMP_OWNER
from mfdeploy.artifacts.tempdirs import make_temp_dir, owned_tempdir, owner, process_start, sweep

# Enters atomic_dir (and an atomic_file beside it), writes a little, says so, and waits to be killed.
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mfdeploy.artifacts.io import atomic_dir, atomic_file
    out = Path(sys.argv[1])
    with atomic_dir(out) as tmp:
        (tmp / "weights.bin").write_bytes(b"x" * 4096)
        def write(p):
            p.write_text("half")
            print("ready", flush=True)
            time.sleep(600)
        atomic_file(out.parent / "report.json", write)
""")

# Replaces an existing output, and waits between moving the old one aside and putting the new one in place.
REPLACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from mfdeploy.artifacts.io import atomic_dir
    out = Path(sys.argv[1])
    real, calls = os.replace, []
    def slow_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the first moved `out` aside; this one would put the new tree in place
            print("moved aside", flush=True)
            time.sleep(600)
        real(src, dst)
    os.replace = slow_replace
    with atomic_dir(out, force=True) as tmp:
        (tmp / "build.json").write_text("new")
""")


def start(script: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    assert line.strip() in ("ready", "moved aside"), proc.stderr.read()
    return proc


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def wait_zombie(pid: int) -> None:
    """Until the killed child is a zombie: dead, not yet reaped (its PID still exists)."""
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="Linux /proc: a zombie is told by its state")
def test_sigkill_leftovers_are_removed_by_the_next_run(tiny_clip_dir, tmp_path):
    killed = start(WRITER, str(tmp_path / "out"))
    alive = start(WRITER, str(tmp_path / "live"))
    try:
        left = hidden(tmp_path)
        assert [n.split("-")[0] for n in left] == [".live.tmp", ".out.tmp", ".report.json.tmp", ".report.json.tmp"]
        ours = [n for n in left if read_pid(tmp_path / n) == killed.pid]
        killed.send_signal(signal.SIGKILL)
        wait_zombie(killed.pid)  # not reaped yet: the PID exists, its owner is dead all the same
        proc = subprocess.run([sys.executable, "-m", "mfdeploy.cli", "prune", "--model", str(tiny_clip_dir),
                               "--method", "magnitude", "--ratio", "0.5", "--out", str(tmp_path / "p")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if "stale" in line]
        assert lines == [f"removed 2 stale temporary folders left by killed runs in {tmp_path}: {', '.join(ours)}"]
        # the living writer's folders are untouched; the killed one's are gone; the new output is whole
        assert hidden(tmp_path) == [n for n in left if n not in ours]
        assert (tmp_path / "p" / "prune.json").is_file()
    finally:
        for proc in (killed, alive):
            proc.kill()
            proc.wait()
    assert sweep(tmp_path) and hidden(tmp_path) == []  # the other one, killed now, goes the same way


def read_pid(folder: Path) -> int:
    return json.loads((folder / TEMP_OWNER).read_text())["pid"]


def test_a_kill_between_the_two_renames_puts_the_previous_output_back(tmp_path, caplog):
    out = tmp_path / "build"
    with atomic_dir(out) as tmp:
        (tmp / "build.json").write_text("previous")
    proc = start(REPLACER, str(out))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # moved aside into .build.old-*, the new tree not in place: as a kill leaves it
    with caplog.at_level(logging.WARNING, logger="mfdeploy"):
        removed = sweep(tmp_path)
    assert (out / "build.json").read_text() == "previous" and hidden(tmp_path) == []
    assert sorted(n.split("-")[0] for n in removed) == [".build.old", ".build.tmp"]
    assert "put back build, which a killed run had moved aside" in caplog.text


def _owned(parent: Path, name: str, **record) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / TEMP_OWNER).write_text(json.dumps({**owner(), "dir": name, **record}))
    return folder


def test_only_folders_of_dead_owners_go(tmp_path, caplog):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    gone = int(finished.stdout)
    me = os.getpid()
    _owned(tmp_path, ".a.tmp-dead", pid=gone, start=process_start(gone))
    if process_start(me) is not None:  # the PID reused by a process started at another time: dead
        _owned(tmp_path, ".b.tmp-reused", pid=me, start=process_start(me) - 1)
    _owned(tmp_path, ".c.tmp-alive")  # this very process
    _owned(tmp_path, ".d.tmp-elsewhere", pid=gone, host=socket.gethostname() + "-other")  # a shared filesystem
    (tmp_path / ".e.tmp-unowned").mkdir()  # written by an older version, or by someone else: never ours to judge
    (tmp_path / ".f.tmp-user").mkdir()
    (tmp_path / ".f.tmp-user" / TEMP_OWNER).write_text("not json")
    _owned(tmp_path, ".g-renamed", pid=gone, dir=".g.tmp-1234")  # an output renamed into place before a kill
    with caplog.at_level(logging.WARNING, logger="mfdeploy"):
        removed = sweep(tmp_path)
    expected = [".a.tmp-dead"] + ([".b.tmp-reused"] if process_start(me) is not None else [])
    assert sorted(removed) == expected
    assert hidden(tmp_path) == [".c.tmp-alive", ".d.tmp-elsewhere", ".e.tmp-unowned", ".f.tmp-user", ".g-renamed"]
    assert caplog.messages == [f"removed {len(expected)} stale temporary folder{'s' if len(expected) > 1 else ''} "
                               f"left by killed runs in {tmp_path}: {', '.join(expected)}"]


def test_owner_record_is_not_part_of_the_output(tmp_path):
    out = tmp_path / "o"
    with atomic_dir(out) as tmp:
        assert json.loads((tmp / TEMP_OWNER).read_text())["pid"] == os.getpid()
        (tmp / "export.json").write_text("{}")
    assert TEMP_OWNER not in {p.name for p in out.rglob("*")}


def test_system_temp_folders_name_their_owner_too(tmp_path):
    stale = make_temp_dir(tmp_path, "mfdeploy-eval-")
    record = json.loads((stale / TEMP_OWNER).read_text())
    (stale / TEMP_OWNER).write_text(json.dumps({**record, "pid": 2**22 + 7}))  # beyond pid_max: no such process
    with owned_tempdir("mfdeploy-eval-", tmp_path) as tmp:
        assert not stale.exists() and tmp.is_dir()
    assert list(tmp_path.iterdir()) == []
