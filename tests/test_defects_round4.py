"""Faults a new user hit (a defect hunt over the CLI): each ends in one line naming it, and nothing is lost."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mfdeploy.artifacts.io import sha256
from mfdeploy.cli import main

REPO = Path(__file__).resolve().parents[1]
FAST_CALIB = ["--calib", "shapes", "--calib-samples", "8"]


@pytest.fixture()
def build(tiny_build) -> Path:
    """A real tiny build (no --int8): the input of quantize, triton, engine and bench; shared, never changed here."""
    return tiny_build


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return _error(capsys)


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_may_not_replace_what_the_command_reads(build, tiny_clip_dir, tmp_path, capsys):
    """`--out SRC --force` once replaced the very build (or checkpoint) the command was reading."""
    b = shutil.copytree(build, tmp_path / "b")
    model = shutil.copytree(tiny_clip_dir, tmp_path / "model")
    before, model_before = _hashes(b), _hashes(model)
    prune = ["--method", "magnitude", "--ratio", "0.5", *FAST_CALIB]
    for argv in (["export", str(b / "pruned"), "--out", str(b), "--force"],
                 ["quantize", str(b), "--out", str(b), "--force", *FAST_CALIB],
                 ["prune", "--model", str(model), *prune, "--out", str(model), "--force"],  # (a pruned model
                 # as --model is refused before that: test_defects_round6)
                 ["build", "--model", str(model), *prune, "--out", str(model), "--force"]):
        line = _fails(argv, capsys)
        assert "which this command reads: choose another --out" in line, (argv, line)
    assert "is inside" in _fails(["quantize", str(b), "--out", str(b / "onnx_dense"), "--force"], capsys)
    assert _hashes(b) == before and _hashes(model) == model_before


def test_keep_float_matching_every_node_is_refused(build, tmp_path, capsys):
    """ONNX Runtime reads an empty node list as 'quantize every node': the record said the opposite."""
    line = _fails(["quantize", str(build), "--out", str(tmp_path / "q"), "--scheme", "dynamic",
                   "--keep-float", "*"], capsys)
    assert "--keep-float * keeps every quantizable node of the" in line and "nothing is left" in line
    assert not (tmp_path / "q").exists()


def test_engine_files_in_a_build_do_not_block_force(build, tmp_path, capsys):
    """What `mfdeploy engine BUILD` (or the printed trtexec commands) add to a CPU build is mfdeploy's."""
    b = shutil.copytree(build, tmp_path / "b")
    (b / "engines").mkdir()
    for name in ("engine.json", "vision.plan", "timing.cache"):
        (b / "engines" / name).write_text("{}")
    from mfdeploy.artifacts.io import foreign_files

    assert foreign_files(b) == []
    (b / "engines" / "notes.txt").write_text("mine")
    assert foreign_files(b) == ["engines/notes.txt"]


def test_a_corrupt_parity_inputs_file_is_named(build, tmp_path, capsys):
    b = shutil.copytree(build, tmp_path / "b")
    (b / "onnx" / "parity_inputs.npz").write_bytes(b"junk")
    from mfdeploy.errors import UserError
    from mfdeploy.runtime.gate import parity_feeds

    with pytest.raises(UserError, match=r"parity_inputs\.npz: unreadable parity inputs") as e:
        parity_feeds(b / "onnx")
    assert "\n" not in str(e.value)
    np.savez(b / "onnx" / "parity_inputs.npz", x=np.zeros(3))  # a real npz without the arrays
    with pytest.raises(UserError, match="unreadable parity inputs .KeyError"):
        parity_feeds(b / "onnx")


def _serve(target: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "mfdeploy.cli", "serve", str(target), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _one_error(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def test_serve_refuses_a_port_in_use_in_one_line(build):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = _one_error(_serve(build, "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_serve_ends_on_any_load_failure_and_checks_hashes(build, tmp_path):
    """A truncated weights file once left the server 'loading' for ever; build.json's sha256 now names it first,
    and a load failure of any kind ends the server."""
    b = shutil.copytree(build, tmp_path / "b")
    weights = b / "pruned" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    assert "model.safetensors" in _one_error(_serve(b, "--port", "0", "--backend", "torch"))
    # the same damage with build.json's record of it gone: the loader's own error ends the server
    manifest = json.loads((b / "build.json").read_text())
    manifest["artifacts"].pop("pruned/model.safetensors")
    (b / "build.json").write_text(json.dumps(manifest))
    line = _one_error(_serve(b, "--port", "0", "--backend", "torch", timeout=60))
    assert line.startswith(f"error: cannot serve {b} with torch: ")


def test_bench_names_int8_backends_fix(build, capsys):
    line = _fails(["bench", str(build), "--backends", "openvino-int8"], capsys)
    assert "unknown 'openvino-int8'" in line and "with --int8 beside the float backend" in line
