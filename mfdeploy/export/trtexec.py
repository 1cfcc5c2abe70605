"""The `trtexec` commands equivalent to `build_engines`, for machines where it cannot run.

They use file names relative to the ONNX directory (run them inside it), the
same optimisation profile, precision, sparsity flag and timing cache file as
the polygraphy build, so an engine built elsewhere matches one built here.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

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
                    fp16: bool, sparse: bool, timing_cache: str | None = TIMING_CACHE, int8: bool = False) -> str:
    """One `trtexec` command line building `plan_file` from `onnx_file`.

    Args:
        onnx_file: ONNX file name (relative to where the command runs).
        plan_file: engine file to write.
        inputs: per input name its min/opt/max shapes.
        fp16: allow FP16 kernels (`--fp16`).
        sparse: let TensorRT use 2:4 sparse kernels (`--sparsity=enable`).
        timing_cache: timing cache file shared by the builds, or None.
        int8: INT8 kernels for a QDQ graph (`--int8`; its scales come from the graph, no calibration).
    """
    args = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={plan_file}"]
    if int8:
        args.append("--int8")
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
                     int8: bool = False) -> list[str]:
    """The commands for every tower.

    Args:
        profiles: tower -> input -> min/opt/max shapes.
        fp16: allow FP16 kernels.
        sparse: tower -> whether to pass `--sparsity=enable`.
        files: tower -> (ONNX file, engine file).
        timing_cache: timing cache file, or None.
        int8: pass `--int8` (QDQ graphs from `mfdeploy quantize --target trt`).
    """
    return [trtexec_command(files[tower][0], files[tower][1], inputs, fp16, sparse.get(tower, False), timing_cache,
                            int8)
            for tower, inputs in profiles.items()]
