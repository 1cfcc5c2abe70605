"""The TensorRT instructions point at the right files, quoted for the shell (issue 31, item 7).

The printed and written lines are run as they are, by bash, with a stand-in `trtexec` that refuses a missing
ONNX file and, like trtexec, a missing output folder: the engines must land where `bench` and `serve` read
them (a build's engines/, or `engine --out DIR`), made from the towers the build asks for (onnx_qdq/ with
--int8). Every path holds a space.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_no_engines

from mfdeploy.cli import main
from mfdeploy.exporting.trtexec import trtexec_script

FAKE_TRTEXEC = """\
import pathlib, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
onnx = pathlib.Path(args["--onnx"])
if not onnx.is_file():
    sys.exit(f"trtexec: cannot read {onnx}")
named = ("--onnx=", "--saveEngine=", "--timingCacheFile=", "--minShapes=", "--optShapes=", "--maxShapes=")
flags = " ".join(a for a in sys.argv[1:] if not a.startswith(named))
pathlib.Path(args["--saveEngine"]).write_text(f"{onnx.resolve()}\\n{flags}")  # no folder: fails, as trtexec does
pathlib.Path(args["--timingCacheFile"]).write_text("cache")
"""


@pytest.fixture(scope="module")
def int8_build(tiny_clip_dir, tmp_path_factory):
    """A real `build --int8` into a folder whose path holds a space; its stdout."""
    import io
    from contextlib import redirect_stdout

    out = tmp_path_factory.mktemp("trtexec") / "my builds" / "b 1"
    out.parent.mkdir()
    printed = io.StringIO()
    with redirect_stdout(printed):
        main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--ratio", "0.5", "--pattern", "2:4",
              "--calib", "shapes", "--calib-samples", "8", "--int8", "--max-batch", "4", "--out", str(out)])
    return out, printed.getvalue()


def run_lines(lines: list[str], cwd: Path, tmp_path: Path) -> None:
    """Run shell lines as a user pasting them would, with the stand-in trtexec first on PATH."""
    bin_dir = tmp_path / "fake bin"
    bin_dir.mkdir(exist_ok=True)
    trtexec = bin_dir / "trtexec"
    trtexec.write_text(f"#!{sys.executable}\n{FAKE_TRTEXEC}")
    trtexec.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euc", "\n".join(lines)], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def assert_engines(engines: Path, towers: Path, flags: str) -> None:
    for tower in ("vision", "text"):
        made_from, got_flags = (engines / f"{tower}.plan").read_text().split("\n")
        assert made_from == str((towers / f"{tower}.onnx").resolve()) and got_flags == flags
    assert (engines / "timing.cache").is_file()


@needs_no_engines
def test_int8_build_instructions_build_from_onnx_qdq_into_engines(int8_build, tmp_path):
    out, printed = int8_build
    engine = __import__("json").loads((out / "build.json").read_text())["engine"]
    assert engine["trtexec_cwd"] == str(out)
    # report.md: run from the build directory, wherever it was copied to
    report = (out / "report.md").read_text()
    block = report.split("```sh\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert not any(line.startswith("cd ") for line in block)
    copy = tmp_path / "copied build"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    run_lines(block, copy, tmp_path)
    assert_engines(copy / "engines", copy / "onnx_qdq", "--int8 --fp16 --sparsity=enable")
    # the lines the build printed: pasted anywhere, they cd into the build first
    lines = printed.splitlines()
    start = lines.index("Build them where a GPU is present by running:") + 1
    pasted = lines[start:start + 4]
    assert shlex.split(pasted[0]) == ["cd", str(out)] and shlex.split(pasted[1]) == ["mkdir", "-p", "engines"]
    run_lines(pasted, tmp_path, tmp_path)
    assert_engines(out / "engines", out / "onnx_qdq", "--int8 --fp16 --sparsity=enable")


@needs_no_engines
def test_engine_int8_out_dir_commands_write_into_out_dir(int8_build, tmp_path, capsys):
    out, _ = int8_build
    target = tmp_path / "int8 engines"
    main(["engine", str(out / "onnx_qdq"), "--int8", "--max-batch", "4", "--out", str(target)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("Build them elsewhere by running:")
    run_lines(lines[1:], tmp_path / "..", tmp_path)
    assert_engines(target, out / "onnx_qdq", "--int8 --fp16")
    assert not (out / "onnx_qdq" / "vision.plan").exists()


@needs_no_engines
def test_engine_int8_of_a_build_reads_its_onnx_qdq_and_writes_its_engines(int8_build, tmp_path, capsys):
    """`engine BUILD --int8` refused the build (its onnx/ holds no QDQ nodes) though `build --int8` wrote
    onnx_qdq/; the working form wrote into onnx_qdq/, where bench and serve do not look."""
    out, _ = int8_build
    main(["engine", str(out), "--int8", "--max-batch", "4"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("Build them elsewhere by running:")
    run_lines(lines[1:], tmp_path / "..", tmp_path)
    assert_engines(out / "engines", out / "onnx_qdq", "--int8 --fp16")


def test_engine_command_of_an_int8_build(int8_build):
    """What `bench`/`serve --backend trt` say to run when an --int8 build has no engines: from onnx_qdq/."""
    from mfdeploy.runtime.registry import BuildDir
    from mfdeploy.runtime.trt_runner import engine_command

    out, _ = int8_build
    args = shlex.split(engine_command(BuildDir(out), "pruned"))
    assert args[:6] == ["mfdeploy", "engine", str(out / "onnx_qdq"), "--out", str(out / "engines"), "--int8"]
    assert args[6:] == ["--max-batch", "4", "--max-text-len", "48", "--sparse", "on"]


@pytest.mark.parametrize("where", ["plain", "with space", "it's", "$HOME; rm -rf x", "a\\b"])
def test_script_lines_round_trip_through_the_shell(where, tmp_path):
    cwd = str(tmp_path / where)
    commands = [shlex.join(["trtexec", f"--onnx={where}/vision.onnx", f"--saveEngine=out {where}/vision.plan"])]
    lines = trtexec_script(commands, cwd)
    assert [shlex.split(line) for line in lines] == [
        ["cd", cwd], ["mkdir", "-p", f"out {where}"],
        ["trtexec", f"--onnx={where}/vision.onnx", f"--saveEngine=out {where}/vision.plan"]]
