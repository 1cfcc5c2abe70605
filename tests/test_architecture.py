"""The package's layering rules (DESIGN.md), checked on the source: imports point down, modules stay small,
file names are defined once, rich lives only in the CLI.

Every import counts, lazy ones inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mfdeploy"

# Level of each top-level part: a module may import its own part and parts of a lower level only.
LEVELS = {
    "errors": 0, "artifacts": 0, "platform": 0, "progress": 0, "_callable": 0,
    "extras": 0,  # which options need which pip extra (find_spec only): checked by the CLI and the pipelines
    # the one ONNX Runtime session setup: export (parity) and runtime (runners) both build sessions and may
    # not import each other, so it sits below both, beside the platform probe it reads the core count from
    "ortsession": 0,
    "data": 1,
    "zoo": 2, "models": 2,
    "runtime": 3,
    "prune": 4, "export": 4, "quantize": 4, "eval": 4, "bench": 4, "server": 4,
    # a Triton model repository from a build: reads the ONNX graphs (export's tower spec) and checkpoint files
    "deploy": 4,
    "pipelines": 5, "api": 5,
    "cli": 6,
}
# Parts of one level that must not import each other (the rest of a level may).
FORBIDDEN = {("export", "runtime"), ("runtime", "export"), ("data", "models"), ("export", "eval"),
             ("export", "bench"), ("runtime", "eval"), ("runtime", "bench"), ("prune", "export"),
             ("export", "prune"),
             ("server", "export"), ("server", "prune"),  # a server serves artifacts: it never makes them
             # evaluation and timing read artifacts; a caller that needs towers made hands in the exporter
             ("eval", "export"), ("bench", "export")}
# The bundled model's training script is a tool built on the package (it monitors zero-shot accuracy);
# `_callable` makes the prune and export packages callable as the API's functions, so it calls up by design.
EXEMPT = {"zoo/train.py", "_callable.py"}
# Names of files that other code and users rely on: written in artifacts/layout.py and nowhere else.
FILE_NAMES = ("build.json", "prune.json", "export.json", "quantize.json", "engine.json", "masks.safetensors",
              "vision.onnx", "text.onnx", "vision.plan", "text.plan", "mfdeploy_origin.json",
              "mfdeploy_structure.json", "parity_inputs.npz", "bench.json", "timing.cache", "sparsity.png",
              "report.md", "triton.json", "config.pbtxt", "model.onnx", "model.plan")
MAX_LINES = 300


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_parts(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "mfdeploy"]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if bits[0] == "mfdeploy" and len(bits) > 1:
                found.add(bits[1])
    return found


def test_every_part_has_a_level():
    assert {part(p) for p in modules()} - {"__init__"} <= set(LEVELS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    if str(path.relative_to(PACKAGE)) in EXEMPT or path == PACKAGE / "__init__.py":
        return
    me = part(path)
    wrong = sorted(p for p in imported_parts(path) - {me}
                   if p in LEVELS and (LEVELS[p] > LEVELS[me] or (me, p) in FORBIDDEN))
    assert not wrong, f"{path.relative_to(PACKAGE)} ({me}, level {LEVELS[me]}) imports {wrong}"


def test_modules_are_small():
    big = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}


def test_file_names_are_defined_once():
    layout = PACKAGE / "artifacts" / "layout.py"
    assert layout.is_file()
    where: dict[str, list[str]] = {}
    for path in modules():
        for name in string_constants(path) & set(FILE_NAMES):
            where.setdefault(name, []).append(str(path.relative_to(PACKAGE)))
    twice = {name: files for name, files in where.items() if files != ["artifacts/layout.py"]}
    assert not twice, f"file names spelled outside artifacts/layout.py: {twice}"


def test_rich_only_in_the_cli():
    users = []
    for path in modules():
        if part(path) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(m == "rich" or m.startswith("rich.") for m in mods):
                users.append(str(path.relative_to(PACKAGE)))
    assert not users, f"rich imported outside mfdeploy/cli/: {sorted(set(users))}"
