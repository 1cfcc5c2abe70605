"""`mfdeploy quantize`: INT8 (or FP8 for TensorRT) towers, gated against fp32, with quantize.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfdeploy.cli.options import CalibOpt, ForceOpt
from mfdeploy.cli.render import err, out, warning
from mfdeploy.cli.root import app


@app.command()
def quantize(
    src: Annotated[Path, typer.Argument(help="An ONNX export directory or a build directory.")],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Output directory (the quantized towers and their record); or --in-place.")] = None,
    in_place: Annotated[bool, typer.Option(
        "--in-place", help="SRC is a build: quantize its onnx/ again into its own onnx_int8/ (e.g. --scheme static "
                           "for OpenVINO INT8), gated as `build --int8` gates it; build.json, report.md and the "
                           "INT8 evaluation rows are updated, and the build is replaced in one rename.")] = False,
    calib: CalibOpt = None,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="Calibration pairs.")] = 128,
    target: Annotated[str, typer.Option(help="ort: ONNX Runtime CPU kernels; trt: TensorRT QDQ (ModelOpt).")] = "ort",
    mode: Annotated[str, typer.Option(help="int8 | fp8 (fp8: --target trt only).")] = "int8",
    scheme: Annotated[str, typer.Option(
        help="--target ort: static (calibrated QDQ) | dynamic | auto (per tower, the faster one measured: "
             "docs/results/cpu-speed.md, INT8 on ViT-B/32).")] = "auto",
    keep_float: Annotated[list[str] | None, typer.Option(
        "--keep-float", metavar="GLOB", help="Keep nodes whose name matches this glob in float; repeat for more.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the quantizers' logs.")] = False,
    force: ForceOpt = False,
) -> None:
    """Quantize both towers (INT8, or FP8 for TensorRT), gate them against fp32, write quantize.json."""
    from mfdeploy.errors import UserError
    from mfdeploy.quantize import QuantizeConfig, run_quantize

    cfg = QuantizeConfig(target=target, mode=mode, scheme=scheme, calib=calib, calib_samples=calib_samples,
                         keep_float=keep_float or [], verbose=verbose)
    if in_place:
        if out_dir is not None or force:
            raise UserError("--in-place rewrites SRC's onnx_int8/: leave out --out and --force")
        _in_place(src, cfg)
        return
    if out_dir is None:
        raise UserError("--out DIR is required (where the quantized towers go), or --in-place for a build")
    with err.status("quantizing"):
        record = run_quantize(src, out_dir, cfg, force=force, warn=warning)
    for tower, rec in record["towers"].items():
        out.print(f"{tower}: {len(rec['quantized_nodes'])} nodes {record['mode']}, {len(rec['float_nodes'])} kept "
                  f"float, {rec['bytes'] / 2**20:.1f} MiB ({rec['size_ratio']:.2f}x fp32), min cosine vs fp32 "
                  f"{record['parity'][tower]['min_cosine']:.5f}", highlight=False, soft_wrap=True)
    out.print(f"wrote {out_dir}", highlight=False, soft_wrap=True)


def _in_place(build: Path, cfg) -> None:
    from mfdeploy.pipelines.requantize import requantize_build

    had = (build / "onnx_int8").is_dir()
    with err.status(f"quantizing {build}/onnx_int8" + (" again" if had else "")):
        manifest = requantize_build(build, cfg, warn=warning)
    q = manifest["quantize"]["onnx_int8"]
    for tower, rec in q["towers"].items():
        out.print(f"{tower}: {rec['scheme']} int8, {rec['bytes'] / 2**20:.1f} MiB ({rec['size_ratio']:.2f}x fp32), min "
                  f"cosine vs fp32 {rec['min_cosine']:.5f}, vs PyTorch {q['vs_torch'][tower]['min_cosine']:.5f}",
                  highlight=False, soft_wrap=True)
    ev = (manifest.get("evaluation") or {}).get("retention_int8")
    if ev and ev.get("mean_retention") is not None:
        out.print(f"INT8 mean retention (vs dense): {ev['mean_retention']:.3f}", highlight=False)
    out.print(f"{'rewrote' if had else 'wrote'} {build}/onnx_int8 (build.json and report.md updated)", highlight=False,
              soft_wrap=True)
