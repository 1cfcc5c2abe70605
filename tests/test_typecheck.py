"""Type checks: the public API (`mfdeploy/__init__.py`, `mfdeploy/api.py` and everything they reach) with every
import followed, and the TensorRT path, which cannot run here, against `tensorrt-stubs`."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_mypy = pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed (dev extra)")


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_mypy_skips_only_third_party_imports_by_name():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "ignore_missing_imports" not in config and "follow_imports" not in config
    for override in config.get("overrides", []):
        modules = override["module"] if isinstance(override["module"], list) else [override["module"]]
        assert not [m for m in modules if m.split(".")[0] in ("mfdeploy", "*")], override
        assert "follow_imports" not in override, override


@pytest.mark.slow
@needs_mypy
def test_the_public_api_typechecks_and_type_checkers_see_its_functions(tmp_path):
    """`mypy mfdeploy` (the whole package, the public API with it) passes with imports followed, and a user's
    script is checked against the real signatures: `mfdeploy.prune` and `mfdeploy.export` are functions."""
    good = tmp_path / "good.py"
    good.write_text("import mfdeploy\n"
                    "from mfdeploy import PruneResult\n\n\n"
                    "def use() -> float:\n"
                    "    model = mfdeploy.load()\n"
                    "    result: PruneResult = mfdeploy.prune(model, ratio=0.5, method='magnitude')\n"
                    "    mfdeploy.export(model, 'out')\n"
                    "    return float(result.sparsity['overall'])\n")
    bad = tmp_path / "bad.py"
    bad.write_text("import mfdeploy\n\nmfdeploy.prune(None, ratio='half')\nmfdeploy.export()\n")
    proc = mypy("mfdeploy", str(good), str(bad))
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert {Path(line.split(":")[0]).name for line in errors} == {"bad.py"}, proc.stdout + proc.stderr
    assert {int(line.split(":")[1]) for line in errors} == {3, 4}, proc.stdout
    assert re.search(r'"prune".*incompatible type "str"', proc.stdout) and 'Missing positional argument' in proc.stdout


@pytest.mark.slow
@needs_mypy
def test_engine_module_typechecks_against_tensorrt_stubs():
    stubs = importlib.util.find_spec("tensorrt")
    assert stubs is not None and stubs.submodule_search_locations, "tensorrt-stubs is not installed"
    proc = mypy("--follow-imports=silent", "mfdeploy/exporting/engine.py", "mfdeploy/runtime/trt_runner.py",
                "mfdeploy/platform.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
