"""The Python API's errors in its caller's terms: `ratio=0`, not `--ratio 0`.

The checks behind `mfdeploy.prune`, `export`, `evaluate` and `tune` are the
CLI's, and their one-line messages name command-line options. `python_names`
wraps an API function so that a `UserError` it raises names the function's
own arguments instead: every `--option` outside backquotes (a backquoted
command is advice about the CLI, kept as it is) that is one of the
function's arguments, or one of the keyword arguments it passes on, becomes
that argument's name (`force=True` for a flag that defaults to False), and a
`TypeError` for an unknown keyword names the function the caller called.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from mfdeploy.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
_OPTION = re.compile(r"--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")
_QUOTED = re.compile(r"(`[^`]*`)")
# CLI options whose Python argument has another name than the option's own
ALIASES = {"depth_share": "mope_depth_share", "neuron_group": "mope_neuron_group", "smax_delta": "ecoflap_smax_delta",
           "eval": "eval_data", "images": "n_images", "pairs": "n_retrieval",
           "out": "out_dir"}  # `export`'s out_dir; `tune`'s own `out` is named first


def pythonic(message: str, names: Iterable[str], flags: Iterable[str] = ()) -> str:
    """`message` with each `--option` that is one of `names` written as that name (`flags`: as `name=True`)."""
    names, flags = set(names), set(flags)

    def one(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        name = name if name in names else ALIASES.get(name, name)
        if name not in names:
            return match.group(0)
        return f"{name}=True" if name in flags else name

    return "".join(part if part.startswith("`") else _OPTION.sub(one, part) for part in _QUOTED.split(message))


def python_names(extra: Iterable[str] = ()) -> Callable[[F], F]:
    """Decorate an API function: its `UserError`s name its arguments (and `extra`, what its `**kwargs` take)."""
    def wrap(fn: F) -> F:
        params = inspect.signature(fn).parameters
        names = {*params, *extra}
        flags = {n for n, p in params.items() if p.default is False}

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                e.args = (pythonic(str(e), names, flags), *e.args[1:])
                raise
            except TypeError as e:  # an unknown keyword, named by the internal function it reached
                text = str(e)
                if "unexpected keyword argument" not in text:
                    raise
                raise TypeError(re.sub(r"^[\w.]+\(\)", f"{fn.__name__}()", text)) from None
        return call  # type: ignore[return-value]
    return wrap


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """Refuse a `value` of argument `name` that is not one of `allowed` (compared by identity for True/False: a
    truthy "no" or 1 is not True)."""
    if not any(value is a if isinstance(a, bool) or a is None else value == a for a in allowed):
        raise UserError(f"{name} {value!r:.40}: expected {' or '.join(repr(a) for a in allowed)}")


def check_callable(name: str, value: Any) -> None:
    """Refuse a `value` of argument `name` that is neither None nor a function."""
    if value is not None and not callable(value):
        raise UserError(f"{name} {value!r:.40}: expected a function taking one line of text (or None)")


def dtype_text(options: dict[str, Any]) -> None:
    """`dtype=torch.bfloat16`, as a PyTorch user passes it first, as the text the checks know ("bfloat16")."""
    dtype = options.get("dtype")
    if type(dtype).__name__ == "dtype" and str(dtype).startswith("torch."):
        options["dtype"] = str(dtype).removeprefix("torch.")


__all__ = ["ALIASES", "check_callable", "check_choice", "dtype_text", "python_names", "pythonic"]
