"""The one exception type a user can cause; the CLI turns it into one line and exit code 2.

Also the one wording of a failed write (`write_error`): the path, the system's cause and its errno.
"""

from __future__ import annotations

import errno
import os
import re


class MfdeployError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class UserError(MfdeployError):
    """Bad input: a path, a value or a file the user gave."""


def first_line(e: BaseException) -> str:
    """An exception's first message line (or its type name): what a one-line error can quote."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def is_number(value: object) -> bool:
    """An int or a float, not a bool (which is an int to Python, and TOML's and JSON's `true` to a user)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_globs(option: str, globs: list[str] | None, names: list[str], what: str) -> None:
    """Refuse a glob of `option` that matches none of `names`: a typo would be recorded as applied.

    Raises:
        UserError: `OPTION 'GLOB' matches no WHAT (of N, named like NAME)`.
    """
    import fnmatch

    for glob in globs or ():
        if not any(fnmatch.fnmatchcase(name, glob) for name in names):
            example = f" (of {len(names)}, named like {names[0]})" if names else ""
            raise UserError(f"{option} {glob!r} matches no {what}{example}")


# What a filesystem says when a write cannot happen: a bad place (not a folder, missing, no permission, a
# read-only or virtual filesystem) or no room. Other errnos (a refused connection, ...) are not about writing.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                          errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.ENAMETOOLONG, errno.EMLINK,
                          errno.EXDEV, errno.EEXIST, errno.ENOTEMPTY})
# Libraries written in Rust (safetensors, tokenizers) report an I/O error as text: "... (os error 28)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class WriteError(UserError):
    """`cannot write PATH: CAUSE (errno N)`: the one line a failed write ends in (`write_error`).

    Attributes:
        path: the file or folder that could not be written, as the user knows it (never a temporary name).
        errno: the system's error number, None when unknown.
        why: the cause, e.g. `No space left on device (errno 28)`.
    """

    def __init__(self, path: object, code: int | None, why: str):
        super().__init__(f"cannot write {path}: {why}")
        self.path, self.errno, self.why = path, code, why


def errno_of(e: BaseException) -> int | None:
    """The errno behind an exception: an `OSError`'s or `WriteError`'s, or one a Rust library quotes in its text."""
    if isinstance(e, (OSError, WriteError)):
        return e.errno
    found = _RUST_OS_ERROR.search(str(e))
    return int(found.group(1)) if found else None


def write_error(path: object, e: BaseException) -> WriteError:
    """The `WriteError` for `path` from the failure `e`: `No space left on device (errno 28)`, its first line else."""
    code = errno_of(e)
    strerror = getattr(e, "strerror", None) if isinstance(e, OSError) else None
    why = f"{strerror or os.strerror(code)} (errno {code})" if code is not None else first_line(e)
    return WriteError(path, code, why)


def os_error_line(e: OSError) -> str:
    """One line for an `OSError` nothing else explained: `PATH: CAUSE (errno N)`, else its first line."""
    if e.errno is None:
        return first_line(e)
    why = f"{e.strerror or os.strerror(e.errno)} (errno {e.errno})"
    if e.filename is None:
        return why
    names = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{names}: {why}"
