"""Optional packages are checked before a command's first step, in one line naming the extra; rich prints what
it is given, brackets included (issue 31, item 9)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import typer
from helpers import run_cli

from mfdeploy.cli.app import app
from mfdeploy.extras import EXTRAS, NEEDS, missing

PACKAGE = Path(__file__).resolve().parents[1] / "mfdeploy"
# the arguments each verb of the table needs besides the option under test (all refused before they are read)
REQUIRED = {"build": ["--out", "{tmp}/b"], "quantize": ["{tmp}/src", "--out", "{tmp}/q"], "serve": ["{tmp}/b"],
            "eval": ["{tmp}/model"], "tune": ["--out", "{tmp}/t"]}
# one row per option value
CASES = [(need, value) for need in NEEDS for value in need.values]


def hide(monkeypatch, extra: str) -> None:
    """As if the extra were not installed: `find_spec` (and import) of its modules find nothing."""
    for module in EXTRAS[extra].modules:
        monkeypatch.setitem(sys.modules, module, None)


def _id(case) -> str:
    need, value = case
    return f"{need.command} {need.written(value)}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_missing_extra_refused_before_the_first_step(case, tmp_path, monkeypatch, capsys):
    need, value = case
    import mfdeploy.models

    def no_work(*args, **kwargs):
        raise AssertionError("a model was loaded before the missing package was reported")

    monkeypatch.setattr(mfdeploy.models, "load", no_work)
    hide(monkeypatch, need.extra)
    written = need.written(value)
    argv = [need.command, *(a.format(tmp=tmp_path) for a in REQUIRED[need.command]), *shlex.split(written)]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    extra = EXTRAS[need.extra]
    assert err.strip() == (f"error: {need.command} {written} needs {extra.provides}, which is not installed (no "
                           f"module {extra.modules[0]!r}): pip install 'mfdeploy[{extra.name}]'")
    assert list(tmp_path.iterdir()) == []


def test_the_table_names_real_options():
    """Each row's option is a parameter of its verb, so the table cannot silently stop matching the CLI."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for need in NEEDS:
        params = {p.name: p for p in commands[need.command].params}
        assert need.option in params and need.flag in params[need.option].opts, need
        assert need.extra in EXTRAS


def test_one_missing_module_of_an_extra_is_enough(monkeypatch):
    monkeypatch.setitem(sys.modules, EXTRAS["modelopt"].modules[-1], None)
    assert missing("modelopt") == [EXTRAS["modelopt"].modules[-1]]


def test_options_that_need_nothing_are_not_refused(monkeypatch):
    from mfdeploy.extras import require

    hide(monkeypatch, "modelopt")
    require("build", int8=False)
    require("quantize", target="ort")
    require("prune", ratio=0.5)


# --- rich prints messages as they are ---------------------------------------------------------------------------

def test_error_with_brackets_keeps_them(tmp_path, capsys):
    parent = tmp_path / "[bold]runs[/bold] [gpu]"
    assert run_cli(["prune", "--ratio", "0.5", "--out", str(parent / "p")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {parent}: parent directory does not exist"


def test_warnings_and_tables_keep_brackets(capsys):
    from mfdeploy.cli.render import print_bench, warning

    warning("install it with pip install 'mfdeploy[modelopt]' [/]")
    print_bench([{"backend": "trt", "status": "unavailable", "reason": "pip install 'mfdeploy[gpu]'"}], "m[x]")
    captured = capsys.readouterr()
    assert "warning: install it with pip install 'mfdeploy[modelopt]' [/]" in captured.err
    assert "unavailable trt: pip install 'mfdeploy[gpu]'" in captured.out and "m[x]" in captured.out


MARKUP = re.compile(r"\[/\]|\[/?(?:bold|italic|dim|underline|red|green|yellow|blue|cyan|magenta|white)\b[^\]]*\]")


def test_no_rich_markup_in_cli_strings():
    """The consoles print literally (markup off): a style written as a markup tag would be printed as text."""
    found = [f"{path.name}:{n}" for path in sorted((PACKAGE / "cli").glob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if MARKUP.search(line)]
    assert found == []
