"""Temporary folders that name their owner, and the removal of those a killed run left behind.

Every output is built in a hidden temporary sibling (`.NAME.tmp-XXXX`, `io.atomic_dir`) and renamed into
place at the end. A process killed with SIGKILL (the OOM killer, `kill -9`, a CI timeout) runs no cleanup,
so its folder stays. Each folder therefore holds an owner record (`TEMP_OWNER`): the host, the PID and the
start time of the process that made it. A later run writing into the same folder (`sweep`) removes the
folders whose owner is gone - the PID runs no more, or now belongs to a process started at another time -
and says so in one line. A folder whose owner lives, or that was made on another host (a shared
filesystem), or that holds no record, is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import TEMP_OWNER

log = logging.getLogger(__name__)  # with logging unconfigured (the CLI), a warning prints as its one line
TOOL = "mfdeploy"
SYSTEM_PREFIX = "mfdeploy-"  # folders in the system's temporary directory (the hidden ones are beside outputs)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (None off Linux or for no such process).

    Field 2, the command name, is in parentheses and may itself hold spaces and parentheses: split after the last.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat); None where unknown."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 is the 20th after the command name
    except (IndexError, ValueError):
        return None


def owner() -> dict[str, Any]:
    """The record of this process: tool, host, PID and start time (None where the system does not say)."""
    pid = os.getpid()
    return {"tool": TOOL, "host": socket.gethostname(), "pid": pid, "start": process_start(pid)}


def owner_alive(record: dict[str, Any]) -> bool:
    """Whether the owner a record names may still run; True whenever that cannot be ruled out."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return True  # another machine's process, or a record we do not understand: keep its folder
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        pass  # EPERM: it exists, as another user
    fields = _stat_fields(pid)
    if fields is None or record.get("start") is None:
        return True  # not Linux, or a record written without a start time: the PID alone says it lives
    if fields[0] in ("Z", "X"):
        return False  # killed, not yet reaped by its parent: it will never finish its output
    return process_start(pid) == record["start"]  # another start time: the PID was reused


def read_owner(folder: Path) -> dict[str, Any] | None:
    """The owner record in `folder`, or None (no record, unreadable, not mfdeploy's)."""
    try:
        record = json.loads((Path(folder) / TEMP_OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("tool") == TOOL else None


def make_temp_dir(parent: Path, prefix: str, restore: str | None = None) -> Path:
    """A new folder `parent/PREFIXxxxxxxxx` holding this process's owner record.

    Args:
        parent: where to make it.
        prefix: its name's start.
        restore: the name of a tree that will be moved into the folder while its replacement is put in place:
            should the owner die in between, `sweep` moves it back to `parent/restore` rather than delete it.

    Raises:
        OSError: the folder or its record cannot be written (nothing is left then).
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        # its own name: once renamed into place (an output), the record no longer describes the folder
        record = {**owner(), "dir": tmp.name, **({"restore": restore} if restore else {})}
        (tmp / TEMP_OWNER).write_text(json.dumps(record), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def aside_prefix(name: str) -> str:
    """How the folder starts that an output `name` is moved into while its replacement is put in place
    (`io.atomic_dir` with force): `.NAME.old-XXXX/NAME`, with `restore: NAME` in its owner record."""
    return f".{name}.old-"


def moved_aside(path: Path) -> str | None:
    """One line for a `path` that is missing because a run replacing it (or a folder above it) moved it aside and
    was killed before the new one went in place: what happened and how to put it back; None for any other absence.

    Read-only commands (info, serve, eval, bench) say it and change nothing: moving the copy back is left to the
    user or to the next run that writes beside it (`sweep`), which only does so once the owner is known dead.
    """
    path = Path(path).expanduser()
    if os.path.lexists(path):
        return None
    missing = path
    while not os.path.lexists(missing.parent) and missing.parent != missing:
        missing = missing.parent
    parent, prefix = missing.parent, aside_prefix(missing.name)
    try:
        names = sorted(e.name for e in os.scandir(parent)
                       if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False))
    except OSError:
        return None
    for name in names:
        record, kept = read_owner(parent / name), parent / name / missing.name
        if record is None or record.get("dir") != name or record.get("restore") != missing.name or not kept.is_dir():
            continue
        put_back = f"`mv {shlex.quote(str(kept))} {shlex.quote(str(missing))}`"
        who = f"pid {record.get('pid')}" + ("" if record.get("host") == socket.gethostname() else
                                            f" on {record.get('host')}")
        if owner_alive(record):  # between its two renames now, or on another host, where its end cannot be seen
            return (f"{missing}: missing while a running mfdeploy ({who}) replaces it; the previous copy is in "
                    f"{kept}: retry once that run ends (if it is gone, put the copy back with {put_back})")
        return (f"{missing}: missing: a run killed while replacing it ({who}) left the previous copy in {kept}; put "
                f"it back with {put_back} (the next mfdeploy command that writes into {parent} does it too)")
    return None


def sweep(parent: Path) -> list[str]:
    """Remove the temporary folders in `parent` whose owner died; one warning line names them.

    Returns:
        The names of the folders removed.
    """
    parent = Path(parent)
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith((".", SYSTEM_PREFIX))]
    except OSError:
        return []  # not a folder, or unreadable: nothing of ours to find
    removed, restored = [], []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        record = read_owner(folder)
        if record is None or record.get("dir") != entry.name or owner_alive(record):
            continue  # not a temporary folder (an output renamed into place keeps no record), or not stale
        target = record.get("restore")
        if (isinstance(target, str) and Path(target).name == target and target not in ("", ".", "..")
                and (folder / target).exists() and not os.path.lexists(parent / target)):
            try:  # the previous output, moved aside by a run killed before it put the new one in place
                os.replace(folder / target, parent / target)
            except OSError:
                continue  # never delete an output that could not be put back
            restored.append(target)
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.lexists(folder):
            removed.append(entry.name)
    if removed:
        line = (f"removed {len(removed)} stale temporary folder{'s' if len(removed) > 1 else ''} left by killed "
                f"runs in {parent}: {', '.join(sorted(removed))}")
        if restored:
            line += f"; put back {', '.join(restored)}, which a killed run had moved aside"
        log.warning("%s", line)
    return removed


def writer_alive(out: Path) -> str | None:
    """A live run's temporary folder for `out` (`.NAME.tmp-XXXX`, `io.atomic_dir`), described for a message; None
    when there is none (this process's own folders do not count)."""
    out = Path(out)
    try:
        entries = [e for e in os.scandir(out.parent) if e.name.startswith(f".{out.name}.tmp-")]
    except OSError:
        return None
    for entry in entries:
        record = read_owner(Path(entry.path)) if entry.is_dir(follow_symlinks=False) else None
        if (record is not None and record.get("dir") == entry.name and record.get("pid") != os.getpid()
                and owner_alive(record)):
            return f"pid {record.get('pid')} on {record.get('host')}, in {entry.path}"
    return None


@contextmanager
def owned_tempdir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """Like `tempfile.TemporaryDirectory`, with an owner record; stale ones of killed runs are swept first.

    Args:
        prefix: its name's start; in the system's temporary directory (the default `parent`) it must start
            with `SYSTEM_PREFIX`, the only names swept there besides hidden ones.
        parent: where to make it (default: the system's temporary directory).
    """
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    sweep(parent)
    tmp = make_temp_dir(parent, prefix)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
