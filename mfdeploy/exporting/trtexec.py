"""The `trtexec` commands equivalent to `build_engines`, for machines where it cannot run.

They read the towers from the ONNX directory and write the engines and the
timing cache where `build_engines` would (its `out_dir`), with the same
optimisation profile, precision and sparsity flag, so an engine built
elsewhere matches one built here. Their paths are relative to one folder
(`trtexec_paths`: the one holding both, e.g. a build directory:
`onnx_qdq/vision.onnx` -> `engines/vision.plan`), which is recorded beside
them (`trtexec_cwd`). `trtexec_script` is the one place that turns them into
the lines printed and written into report.md: `cd`, `mkdir -p`, the commands,
every path shell-quoted.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from mfdeploy.artifacts.layout import TIMING_CACHE

# tower -> input name -> {"min": shape, "opt": shape, "max": shape}
Profiles = Mapping[str, Mapping[str, Mapping[str, Sequence[int]]]]


def dims(shape: Sequence[int]) -> str:
    """`(1, 3, 224, 224)` -> `"1x3x224x224"`, trtexec's shape syntax."""
    return "x".join(str(int(d)) for d in shape)


def shapes_arg(flag: str, inputs: Mapping[str, Mapping[str, Sequence[int]]], which: str) -> str:
    """`--minShapes=input_ids:1x1,attention_mask:1x1` (inputs in their graph order)."""
    return f"--{flag}=" + ",".join(f"{name}:{dims(s[which])}" for name, s in inputs.items())


def trtexec_command(onnx_file: str, plan_file: str, inputs: Mapping[str, Mapping[str, Sequence[int]]],
                    fp16: bool, sparse: bool, timing_cache: str | None = TIMING_CACHE, int8: bool = False,
                    fp8: bool = False) -> str:
    """One `trtexec` command line building `plan_file` from `onnx_file`.

    Args:
        onnx_file: ONNX file name (relative to where the command runs).
        plan_file: engine file to write.
        inputs: per input name its min/opt/max shapes.
        fp16: allow FP16 kernels (`--fp16`).
        sparse: let TensorRT use 2:4 sparse kernels (`--sparsity=enable`).
        timing_cache: timing cache file shared by the builds, or None.
        int8: INT8 kernels for a QDQ graph (`--int8`; its scales come from the graph, no calibration).
        fp8: FP8 kernels for an FP8 QDQ graph (`--fp8` in place of `--int8`).
    """
    args = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={plan_file}"]
    if int8 or fp8:
        args.append("--fp8" if fp8 else "--int8")
    if fp16:
        args.append("--fp16")
    if sparse:
        args.append("--sparsity=enable")
    args += [shapes_arg("minShapes", inputs, "min"), shapes_arg("optShapes", inputs, "opt"),
             shapes_arg("maxShapes", inputs, "max")]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def trtexec_commands(profiles: Profiles, fp16: bool, sparse: Mapping[str, bool],
                     files: Mapping[str, tuple[str, str]], timing_cache: str | None = TIMING_CACHE,
                     int8: bool = False, fp8: bool = False) -> list[str]:
    """The commands for every tower.

    Args:
        profiles: tower -> input -> min/opt/max shapes.
        fp16: allow FP16 kernels.
        sparse: tower -> whether to pass `--sparsity=enable`.
        files: tower -> (ONNX file, engine file).
        timing_cache: timing cache file, or None.
        int8: pass `--int8` (QDQ graphs from `mfdeploy quantize --target trt`).
        fp8: pass `--fp8` instead (the FP8 QDQ graphs of `--mode fp8`).
    """
    return [trtexec_command(files[tower][0], files[tower][1], inputs, fp16, sparse.get(tower, False), timing_cache,
                            int8, fp8)
            for tower, inputs in profiles.items()]


def trtexec_paths(onnx_dir: Path, out_dir: Path, files: Mapping[str, tuple[str, str]],
                  timing_cache: str = TIMING_CACHE) -> tuple[str, dict[str, tuple[str, str]], str]:
    """Where the commands run, and the files they name relative to it.

    Args:
        onnx_dir: where the towers are read.
        out_dir: where the engines and the timing cache go.
        files: tower -> (ONNX file name, engine file name).
        timing_cache: the timing cache's file name.

    Returns:
        `(cwd, tower -> (ONNX path, engine path), timing cache path)`: cwd is `onnx_dir` when the engines
        go there too, else the (absolute) folder holding both.
    """
    if Path(onnx_dir) == Path(out_dir):
        cwd = str(onnx_dir)
    else:
        cwd = os.path.commonpath([os.path.abspath(onnx_dir), os.path.abspath(out_dir)])

    def rel(folder: Path, name: str) -> str:
        return Path(os.path.relpath(os.path.abspath(Path(folder) / name), os.path.abspath(cwd))).as_posix()

    paths = {tower: (rel(onnx_dir, onnx), rel(out_dir, plan)) for tower, (onnx, plan) in files.items()}
    return cwd, paths, rel(out_dir, timing_cache)


def trtexec_script(commands: Sequence[str], cwd: str | None) -> list[str]:
    """The shell lines that build the engines: `cd CWD` (None: none), `mkdir -p` their folder, the commands.

    One line each, never wrapped, every path quoted for a POSIX shell, so each can be pasted as it is.
    """
    folders = sorted({os.path.dirname(arg.split("=", 1)[1]) for command in commands
                      for arg in shlex.split(command) if arg.startswith("--saveEngine=")} - {""})
    return ([shlex.join(["cd", cwd])] if cwd is not None else []) + (
        [shlex.join(["mkdir", "-p", *folders])] if folders else []) + list(commands)
