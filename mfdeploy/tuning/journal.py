"""The tune journal: `DIR/trials.jsonl`, one JSON line per finished trial, appended as each trial finishes.

Why not Optuna's own journal storage: it logs several operations per trial (create, each parameter, the
values, the state), and a damaged line in the middle makes it refuse the whole file. Here a trial is one line
written with one `write` and flushed to disk, so a kill leaves at most an unfinished last line, and a damaged
line costs exactly that trial: it is named in one warning, skipped, and that trial runs again. The Optuna study
is rebuilt in memory from these lines at every start (`mfdeploy.tuning.run`), so the sampler never proposes a
trial that finished.

`DIR/tune_settings.json` holds what makes measurements comparable (model, backend, batch, data, space): a
resumed tune must match it. `DIR/.lock` keeps two tunes out of one directory.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.io import write_json
from mfdeploy.errors import UserError
from mfdeploy.tuning.records import Record, record_problem

TRIALS = "trials.jsonl"
SETTINGS = "tune_settings.json"
LOCK = ".lock"
# settings that say where the space came from, not what it holds (the fingerprint compares that): the same TOML
# named by another path, or from another working directory, resumes the tune
DESCRIPTIVE = ("space_spec", "space_lists")


def read_records(out: Path, warn: Callable[[str], None]) -> list[Record]:
    """The finished trials in `out/trials.jsonl` (none if it does not exist); a damaged line (not JSON, or not a
    whole trial record) is warned about (file and line number) and skipped, so its trial runs again, unless a later
    line records that trial. A trial recorded twice counts once: the first record, or the first that did not fail
    (a failed trial runs again on resume, `mfdeploy.tuning.run`)."""
    path = out / TRIALS
    if not path.is_file():
        return []
    by_key: dict[str, Record] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                record = json.loads(raw)
                problem = record_problem(record)
                if problem:
                    raise ValueError(problem)
            except (ValueError, UnicodeDecodeError) as e:
                cut = "" if raw.endswith(b"\n") else " (cut off: the run was killed while writing it)"
                warn(f"{path}: line {number} is not a trial record{cut}: skipped, that trial runs again unless it "
                     f"finished since ({e})")
                continue
            twin = next((r for r in by_key.values() if r["number"] == record["number"]
                         and r["key"] != record["key"]), None)
            if twin is not None:  # `--pick N` would be ambiguous
                warn(f"{path}: line {number} gives trial #{record['number']} to {record['key']!r}, which "
                     f"{twin['key']!r} has: skipped, that trial runs again")
                continue
            old = by_key.get(record["key"])
            # two workers finished the same trial: the first one counts; a failed one, retried, gives way
            if old is None or (old["state"] == "failed" and record["state"] != "failed"):
                by_key[record["key"]] = record
    return sorted(by_key.values(), key=lambda r: r["number"])


def append_record(out: Path, record: Record) -> None:
    """Add a finished trial: one line, one write, flushed to the disk before the next trial starts."""
    line = json.dumps(record, default=str, allow_nan=False) + "\n"
    fd = os.open(out / TRIALS, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut off by a kill: end it, or this one joins it
            line = "\n" + line
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record the settings of a new tune, or refuse to resume one whose settings differ (its trials would not
    compare with the new ones)."""
    path = out / SETTINGS
    if not path.is_file():
        write_json(path, settings)
        return
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError(f"a JSON {type(old).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); use another --out, or --force to start over") from None
    for key, value in settings.items():
        if key in DESCRIPTIVE:
            continue
        if old.get(key) != value and not _same_path(old.get(key), value):
            raise UserError(f"{out} holds a tune with different settings ({key}: {old.get(key)!r} there, {value!r} "
                            "now): its trials would not compare; use another --out, or --force to start over")


def _same_path(old: Any, new: Any) -> bool:
    """Whether two recorded paths name one file: a tune from before paths were recorded absolute holds them as typed
    (relative to the folder it ran in, the one a resume runs in too)."""
    return isinstance(old, str) and isinstance(new, str) and Path(old).expanduser().exists() and \
        Path(old).expanduser().resolve() == Path(new).expanduser().resolve()


def start_over(out: Path, written: set[str]) -> None:
    """`--force`: empty a tune directory, all but the lock its caller holds; refused (nothing deleted) when it
    holds an entry that is not one of `written` (the names a tune writes) or a hidden temporary sibling of one.

    Raises:
        UserError: the entries mfdeploy did not write, named.
    """
    import shutil

    from mfdeploy.artifacts.guards import some

    def ours(name: str) -> bool:
        return name in written or any(name.startswith((f".{w}.tmp-", f".{w}.old-")) for w in written)

    foreign = sorted(e.name for e in out.iterdir() if not ours(e.name))
    if foreign:
        raise UserError(f"--force will not replace {out}: it holds files mfdeploy did not write ({some(foreign)}); "
                        "move them out first")
    for entry in out.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def started_here(name: str) -> bool:
    """Whether an entry of a directory is what a tune leaves there before its settings exist: the lock, or the
    temporary folder of the settings being written (`artifacts.io.atomic_file`)."""
    return name == LOCK or name.startswith(f".{SETTINGS}.tmp-")


class DirLock:
    """An exclusive lock on a tune directory for the life of one tune (released by the OS if it dies)."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self.fd: int | None = None

    def __enter__(self) -> DirLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise UserError(f"{self.path.parent}: another tune is running there (pid {holder}); wait for it or use "
                            "another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


__all__ = ["LOCK", "SETTINGS", "TRIALS", "DirLock", "append_record", "check_settings", "read_records", "start_over",
           "started_here"]
