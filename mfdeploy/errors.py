"""The one exception type a user can cause; the CLI turns it into one line and exit code 2."""


class MfdeployError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class UserError(MfdeployError):
    """Bad input: a path, a value or a file the user gave."""


def first_line(e: BaseException) -> str:
    """An exception's first message line (or its type name): what a one-line error can quote."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
