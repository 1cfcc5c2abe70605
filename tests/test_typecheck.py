"""The TensorRT path cannot run here, so it is type-checked against `tensorrt-stubs` instead."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed (dev extra)")
def test_engine_module_typechecks_against_tensorrt_stubs():
    stubs = importlib.util.find_spec("tensorrt")
    assert stubs is not None and stubs.submodule_search_locations, "tensorrt-stubs is not installed"
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
         "mfdeploy/export/engine.py", "mfdeploy/runtime/trt_runner.py", "mfdeploy/platform.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
