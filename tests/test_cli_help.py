"""`--help` of every command reads like a normal command line, and a bad command line exits 2 without a traceback."""

from __future__ import annotations

import re

import pytest

from mfdeploy.cli import app, main

COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def _help(argv, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # one line per option: no wrapping to split what we look for
    try:
        main([*argv, "--help"])
    except SystemExit as exc:  # a command's --help exits 0; the root's returns
        assert exc.code == 0
    return capsys.readouterr().out


def _option_line(text: str, option: str) -> str:
    lines = [line for line in text.splitlines() if re.search(rf"(^|[\s│]){re.escape(option)}(\s|$)", line)]
    assert lines, f"{option} not in help:\n{text}"
    return lines[0]


def test_every_command_is_covered():
    assert {"info", "prune", "eval", "bench", "export", "engine", "build", "tune"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["root", *COMMANDS])
def test_help_has_no_type_on_flags_and_no_braces_in_usage(command, capsys, monkeypatch):
    text = _help(command, capsys, monkeypatch)
    assert "<bool>" not in text  # flags take no value
    assert "<list" not in text  # repeatable options show a metavar, not a Python type
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert not re.search(r"\[[a-z_]+\]", usage), usage  # optional arguments as [MODEL], not [model]
    assert "--no-force" not in text
    assert "Show this message and exit." in _option_line(text, "--help")


@pytest.mark.parametrize("command, argument", [
    ("engine", "ONNX_DIR"), ("bench", "BUILD_DIR"), ("export", "[MODEL]"), ("eval", "[MODEL]"), ("info", "[MODEL]"),
])
def test_usage_shows_argument_metavars(command, argument, capsys, monkeypatch):
    usage = next(line for line in _help([command], capsys, monkeypatch).splitlines() if "Usage:" in line)
    assert usage.rstrip().endswith(f"{command} [OPTIONS] {argument}"), usage


@pytest.mark.parametrize("command", ["prune", "build", "export"])
def test_force_is_one_plain_flag(command, capsys, monkeypatch):
    line = _option_line(_help([command], capsys, monkeypatch), "--force")
    assert "--no-force" not in line and "<" not in line
    assert "Replace an output directory that mfdeploy wrote" in line


@pytest.mark.parametrize("command", ["prune", "build"])
@pytest.mark.parametrize("option", ["--include", "--exclude"])
def test_repeatable_options_say_so(command, option, capsys, monkeypatch):
    line = _option_line(_help([command], capsys, monkeypatch), option)
    assert "repeat for more" in line and "GLOB" in line


def test_eval_help_describes_the_image_folder_layout(capsys, monkeypatch):
    text = " ".join(_help(["eval"], capsys, monkeypatch).split())
    assert "one sub-folder per class" in text and "FOLDER/cat/001.jpg" in text and "at least two" in text


@pytest.mark.parametrize("argv, message", [
    (["prune", "--ratio"], "requires an argument"),
    # click 8.2+ says "No such option '--bogus'"; typer's rich formatting, "No such option: --bogus"
    (["prune", "--bogus"], r"No such option:? '?--bogus"),
    (["engine"], "Missing argument 'ONNX_DIR'"),
    (["export", "--out", "x", "--no-force"], r"No such option:? '?--no-force"),
])
def test_bad_command_line_exits_2_without_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_an_option_declared_with_a_none_default_keeps_its_name_on_python_3_10():
    """Python 3.10's get_type_hints wraps a None-default parameter's hint in Optional[...], which hid the Annotated
    option declaration from typer: `build --eval` was unknown there (typer saw a plain `--eval-data`)."""
    from typing import Annotated, Optional

    import typer

    from mfdeploy.cli.options import _declared

    declared = Annotated[str | None, typer.Option("--eval")]
    assert _declared(Optional[declared]) == declared  # noqa: UP045 - the wrapping 3.10 does
    assert _declared(declared) == declared and _declared(int) is int
