#!/usr/bin/env bash
# The wheels that `benchmarks/gpu_session.sh` installs on the GPU machine: the packages mfdeploy needs that the
# machine's image lacks (starlette, uvicorn, httptools, polygraphy, and pydantic, which typer needs; the device
# notes' KINDS.md lists what the image holds), and typer, click and typing-extensions at the versions this checkout
# is tested with. Run here, in the repository root, inside the project's virtual environment (the versions are
# read from it); the device run carries `.whl` (about 4 MB).
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
for name in starlette uvicorn httptools polygraphy typer click pydantic pydantic-core annotated-types typing-inspection typing-extensions; do
  version=$(python -c "import importlib.metadata as m; print(m.version('$name'))")
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$name==$version"
done
ls .whl && du -sh .whl
