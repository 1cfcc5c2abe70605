"""pyproject's dependency floors are the releases .ci/floors tests: .ci/floors.txt pins each at its floor."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_norm(name)] = Version(version)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_runtime_dependency_has_a_floor_and_floors_txt_pins_it():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = _pins()
    floors = {}
    for dep in map(Requirement, deps):
        lower = [Version(s.version) for s in dep.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{dep}: a runtime dependency needs exactly one floor (>=)"
        floors[_norm(dep.name)] = lower[0]
    assert floors == pins, "pyproject's floors and .ci/floors.txt differ: move both, then run bash .ci/floors"


def test_the_floors_script_installs_against_floors_txt_on_the_oldest_python():
    script = (ROOT / ".ci" / "floors").read_text()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    oldest = re.fullmatch(r">=(3\.\d+)", requires).group(1)
    assert f"PYTHON:-python{oldest}" in script
    assert "-c .ci/floors.txt -e ." in script and "mfdeploy build --ratio 0.5 --fp16" in script
