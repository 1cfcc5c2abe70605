"""Help that reads like a normal command line, whatever typer renders by default.

typer 0.2x (which vendors click as `typer._click`) labels every parameter in
`--help` with its Python type, flags included (`--force <bool>`, even
`--help <bool>`), and writes a required argument in the usage line as its
lower-case parameter name in braces (`{onnx_dir}`). typer reads an explicit
`metavar` instead of the type when one is set, so these classes give flags an
empty one and arguments an upper-case one (`ONNX_DIR`), and write the usage
line the usual way (`ONNX_DIR`, `[MODEL]`). Older typer releases, built on
click itself, already render flags without a type; the classes change nothing
there that those releases do not already do.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup


def _plain_params(params: list[Any]) -> list[Any]:
    for param in params:
        if param.param_type_name == "option" and getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # a flag takes no value: show no type
        elif param.param_type_name == "argument" and param.metavar is None:
            param.metavar = param.name.upper()
    return params


def _usage(command: Any, ctx: Any) -> list[str]:
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if param.param_type_name != "argument":
            continue
        name = param.metavar + ("..." if param.nargs != 1 else "")
        pieces.append(name if param.required else f"[{name}]")
    return pieces


class Command(TyperCommand):
    """A typer command whose help shows flags without a type and arguments as `NAME` metavars."""

    def get_params(self, ctx: Any) -> list[Any]:  # noqa: D102
        return _plain_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:  # noqa: D102
        return _usage(self, ctx)


class Group(TyperGroup):
    """The root command group, with the same help conventions as `Command`."""

    def get_params(self, ctx: Any) -> list[Any]:  # noqa: D102
        return _plain_params(super().get_params(ctx))


def usage_errors() -> tuple[type[Exception], ...]:
    """The exception classes a bad command line raises, for this typer release.

    typer 0.2x raises its vendored click's exceptions (`typer.TyperException`
    and subclasses), which `click.ClickException` does not catch; older typer
    raises click's own. Both are caught, so a typo in an option ends in the
    usage line and exit code 2 with either.
    """
    import typer

    found: list[type[Exception]] = []
    if hasattr(typer, "TyperException"):
        found.append(typer.TyperException)
    try:
        import click
    except ImportError:  # typer 0.2x no longer needs click
        pass
    else:
        found.append(click.ClickException)
    return tuple(found)
