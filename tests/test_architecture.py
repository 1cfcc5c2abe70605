"""The package's layering rules (DESIGN.md), checked on the source: imports point down, no module imports itself
through others (no import cycles), modules stay small, file names are defined once, rich lives only in the CLI.

Every import counts, lazy ones inside functions and `if TYPE_CHECKING:` ones too: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mfdeploy"

# Level of each top-level part: a module may import its own part and parts of a lower level only.
LEVELS = {
    "errors": 0, "artifacts": 0, "platform": 0, "progress": 0,
    "_version": 0,  # the version every record states, apart from the root package (which resolves the API)
    "extras": 0,  # which options need which pip extra (find_spec only): checked by the CLI and the pipelines
    # the one ONNX Runtime session setup: exporting (parity) and runtime (runners) both build sessions and may
    # not import each other, so it sits below both, beside the platform probe it reads the core count from
    "ortsession": 0,
    "data": 1,
    "zoo": 2, "models": 2,
    "runtime": 3,
    "pruning": 4, "exporting": 4, "quantize": 4, "eval": 4, "bench": 4, "server": 4,
    # a Triton model repository from a build: reads the ONNX graphs (exporting's tower spec) and checkpoint files
    "deploy": 4,
    "pipelines": 5, "api": 5,
    "api_names": 5,  # the Python API's errors in its arguments' names
    "tuning": 5,  # `mfdeploy tune` runs builds (pipelines) and measures them (eval, bench)
    "cli": 6,
}
# Parts of one level that must not import each other (the rest of a level may).
FORBIDDEN = {("exporting", "runtime"), ("runtime", "exporting"), ("data", "models"), ("exporting", "eval"),
             ("exporting", "bench"), ("runtime", "eval"), ("runtime", "bench"), ("pruning", "exporting"),
             ("exporting", "pruning"),
             ("server", "exporting"), ("server", "pruning"),  # a server serves artifacts: it never makes them
             # evaluation and timing read artifacts; a caller that needs towers made hands in the exporter
             ("eval", "exporting"), ("bench", "exporting")}
# The bundled model's training script is a tool built on the package (it monitors zero-shot accuracy).
EXEMPT = {"zoo/train.py"}
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


def is_part(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def imported_parts(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from mfdeploy import prune`: a name the root package resolves from the API, not a part
            names = [node.module] + [f"{node.module}.{a.name}" if is_part(a.name) else "mfdeploy.api"
                                     for a in node.names if node.module == "mfdeploy"]
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


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {module of the package it imports: line of the first such import}, every import counted.

    An import names the most specific module of the package it reaches: `from a.b import c` is `a.b.c` when that
    is a module, else `a.b` (whose `__init__` defines `c`). Importing a module also runs its parents' `__init__`,
    which is not counted: every module would otherwise depend on its own package.
    """
    root = package.name
    paths = {module_name(p, package): p for p in package.rglob("*.py") if "__pycache__" not in p.parts}

    def reached(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for module, path in paths.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph[module] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package `level - 1` steps above this module's
                    bits = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*bits, base] if base else bits)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            for target in targets:
                found = reached(target) if target.split(".")[0] == root else None
                if found and found != module:
                    edges.setdefault(found, node.lineno)
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[tuple[list[str], set[str]]]:
    """Each group of modules that import one another (a strongly connected component), with one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = {stack.pop()}
            while v not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # the shortest way from the group's first module back to it, inside the group
        start = min(group)
        way = {start: [start]}  # module -> the modules from `start` to it
        frontier = [start]
        while not any(start in graph[v] for v in frontier):  # a group is strongly connected: this ends
            step = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in group and w not in way:
                        way[w] = [*way[v], w]
                        step.append(w)
            frontier = step
        last = next(v for v in frontier if start in graph[v])
        cycles.append(([*way[last], start], group))
    return cycles


def describe(cycle: list[str], group: set[str], graph: dict[str, dict[str, int]]) -> str:
    line = " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
    rest = sorted(group - set(cycle))
    return line + (f"; in the same tangle: {', '.join(rest)}" if rest else "")


def test_no_import_cycles():
    graph = import_graph()
    assert "mfdeploy.pipelines.build" in graph and graph["mfdeploy.pipelines.build"]  # the graph is read
    cycles = [describe(cycle, group, graph) for cycle, group in import_cycles(graph)]
    assert not cycles, "import cycles (lazy and TYPE_CHECKING imports count):\n" + "\n".join(cycles)


def test_the_cycle_check_sees_lazy_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import B\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")  # lazy
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.sub import B\n")  # the package's __init__, outside the cycle
    graph = import_graph(pkg)
    assert graph["pkg.d"] == {"pkg.sub": 1} and graph["pkg.sub"] == {"pkg.sub.b": 1}
    assert [describe(cycle, group, graph) for cycle, group in import_cycles(graph)] == [
        "pkg.a (line 2) -> pkg.sub.b (line 3) -> pkg.sub.c (line 1) -> pkg.a"]


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
