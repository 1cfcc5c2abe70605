#!/usr/bin/env bash
# Issue 30's GPU run as one command on the device machine, from the repository root, after
# `bash benchmarks/gpu_wheels.sh` here:
#     run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=540)
# Installs the carried wheels into $TMPDIR/mfdeploy-site, records nvidia-smi, and runs benchmarks/gpu_check.py (its steps
# bounded by --budget-s) with its log, writing under $OUT (benchmarks/results without one). Extra arguments go
# to gpu_check.py: `bash benchmarks/gpu_session.sh --cpu-dry-run` checks the whole command on a CPU.
set -uo pipefail
site=${TMPDIR:-/tmp}/mfdeploy-site
if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  echo "gpu_session: python3 is not 3.12 here: the carried cp312 wheels are not installed" >&2
  site=
elif compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_session: the carried wheels in .whl did not install" >&2; exit 1; }
fi
export PYTHONPATH="$PWD${site:+:$site}" PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
nvidia-smi > "$out/nvidia_smi.txt" 2>&1 || echo "no nvidia-smi here" > "$out/nvidia_smi.txt"
timeout 500 python3 benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
