"""README.md and docs/ against the code: every `mfdeploy ...` line parses, runnable examples run, CI runs the README.

Nothing shown to a user is taken on trust: a command line in a fenced block of README.md or docs/ is parsed by the
real CLI (an unknown command or option fails; nothing is executed), a Python block marked `<!-- runnable -->` is
run as written, `.ci/run` runs the README's quick start and test lines verbatim and builds the site strictly, and the
architecture page states the levels `tests/test_architecture.py` enforces.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from mfdeploy.cli.help import usage_errors
from mfdeploy.cli.reference import command

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```|~~~)(?P<lang>[\w-]*)[^\n]*\n"
                   r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.M | re.S)
RUNNABLE = re.compile(r"<!-- runnable -->\s*\n```python\n(?P<code>.*?)^```", re.M | re.S)
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every non-Python fenced block, backslash continuations joined."""
    found = []
    for block in FENCE.finditer(text):
        if block["lang"] in ("python", "py", "json", "yaml", "toml"):
            continue
        first = text.count("\n", 0, block.start("body")) + 1
        pending, start = "", first
        for offset, line in enumerate(block["body"].splitlines()):
            if not pending:
                start = first + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            found.append((start, (pending + line).strip()))
            pending = ""
    return found


def mfdeploy_commands(line: str) -> list[list[str]]:
    """The argument lists of every `mfdeploy` command in a shell line (chained with &&, |, ...; comments dropped)."""
    lexer = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in list(lexer) + [";"]:
        if token in SHELL_OPERATORS:
            if current and current[0] == "mfdeploy":
                commands.append(current[1:])
            current = []
        else:
            current.append(token)
    return commands


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in [README, *PAGES]:
        for number, line in shell_lines(path.read_text(encoding="utf-8")):
            found += [(f"{rel(path)}:{number}", args) for args in mfdeploy_commands(line)]
    return found


def parse(args: list[str]) -> None:
    """Parse `mfdeploy ARGS` as the console script would, without running it: raises on any usage error."""
    ctx = command.make_context("mfdeploy", list(args), resilient_parsing=False)
    # typer 0.2x's vendored click keeps the subcommand in `_protected_args`; click itself in `protected_args`
    protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
    rest = [*protected, *ctx.args]
    if not rest:
        raise AssertionError("no command given")
    name, sub, rest = command.resolve_command(ctx, rest)
    sub.make_context(name, rest, parent=ctx)


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_verb():
    """The collector finds the command lines (a broken fence pattern would make the parse test vacuous)."""
    shown = {args[0] for _, args in COMMANDS if args}
    assert set(command.commands) <= shown, f"verbs with no example in README or docs: {set(command.commands) - shown}"


@pytest.mark.parametrize("where,args", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_line_parses(where, args):
    try:
        parse(args)
    except usage_errors() as e:
        pytest.fail(f"{where}: `mfdeploy {shlex.join(args)}` does not parse: {e.format_message()}")


@pytest.mark.parametrize("args", [
    ["prune", "--ratio", "0.5", "--out", "p", "--ration", "0.5"],  # an unknown option
    ["prun", "--ratio", "0.5"],  # an unknown command
    ["quantize", "build", "--out", "q", "[--mode", "fp8]"],  # a usage synopsis is not a command line
    ["serve", "--port", "8080"],  # a missing argument (BUILD_DIR)
])
def test_the_parser_rejects_what_the_cli_rejects(args):
    with pytest.raises(usage_errors()):
        parse(args)


def test_shell_lines_join_continuations_and_split_chains():
    text = "```sh\npip install x && mfdeploy build \\\n    --ratio 0.5   # note\necho done | mfdeploy info\n```\n"
    lines = shell_lines(text)
    assert lines == [(2, "pip install x && mfdeploy build      --ratio 0.5   # note"),
                     (4, "echo done | mfdeploy info")]
    assert [c for _, line in lines for c in mfdeploy_commands(line)] == [["build", "--ratio", "0.5"], ["info"]]


def runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in [README, *PAGES]:
        text = path.read_text(encoding="utf-8")
        blocks += [(f"{rel(path)}:{text.count(chr(10), 0, m.start()) + 1}", m["code"]) for m in RUNNABLE.finditer(text)]
    return blocks


RUNNABLE_BLOCKS = runnable_blocks()


def test_there_are_runnable_examples():
    assert len(RUNNABLE_BLOCKS) >= 2


@pytest.mark.parametrize("where,code", RUNNABLE_BLOCKS, ids=[where for where, _ in RUNNABLE_BLOCKS])
def test_runnable_example_runs_as_written(where, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def fenced_lines(text: str, starting: str) -> list[str]:
    return [line for _, line in shell_lines(text) if line.startswith(starting)]


def test_ci_runs_the_readme_quick_start_and_test_lines_and_builds_the_docs_strictly():
    readme = README.read_text(encoding="utf-8")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    quick = fenced_lines(readme, "pip install torch==2.13.0 -e . && mfdeploy build")
    tests = fenced_lines(readme, 'pip install torch==2.13.0 -e ".[dev]"')
    assert len(quick) == 1 and len(tests) == 1 and "python -m pytest" in tests[0]
    assert quick[0] in ci_lines and tests[0] in ci_lines
    assert ci_lines.index(quick[0]) < ci_lines.index(tests[0])
    docs = [i for i, line in enumerate(ci_lines) if "mkdocs build --strict" in line and not line.startswith("#")]
    assert docs and docs[0] > ci_lines.index(tests[0])


def test_readme_is_short_and_its_links_exist():
    readme = README.read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert "pip install torch==2.13.0" in readme  # the CPU build of torch, not a multi-GB CUDA one
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert local and not [link for link in local if not (ROOT / link).exists()]


def literal(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found")


def test_the_architecture_page_states_the_rules_the_tests_enforce():
    rules = ast.parse((ROOT / "tests" / "test_architecture.py").read_text())
    levels, forbidden = literal(rules, "LEVELS"), literal(rules, "FORBIDDEN")
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    stated_levels = {part: int(level) for level, parts in re.findall(r"^\| (\d+) \| (.+) \|$", page, re.M)
                     for part in re.findall(r"`([\w]+)`", parts)}
    stated_pairs = set(re.findall(r"^\| `(\w+)` \| `(\w+)` \|", page, re.M))
    assert stated_levels == levels
    assert stated_pairs == set(forbidden)


def test_the_cli_reference_lists_every_command_and_option():
    """The generated reference (mkdocs-click over the typer app) carries every verb, option and help text."""
    from mkdocs_click._docs import make_command_docs

    page = "\n".join(make_command_docs("mfdeploy", command, depth=1, style="plain", list_subcommands=True))
    for name, sub in command.commands.items():
        assert f"mfdeploy {name}" in page
        for param in sub.params:
            for flag in param.opts if param.param_type_name == "option" else ():
                assert flag in page, f"{name} {flag} missing from the CLI reference"
            if param.param_type_name == "option" and param.help:
                assert param.help.split()[0] in page
