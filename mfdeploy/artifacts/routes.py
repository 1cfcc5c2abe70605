"""What runs a folder of towers that has no export.json, for `serve` and `eval` alike.

`mfdeploy quantize BUILD --out DIR` writes towers and quantize.json but no export.json (a build's onnx/ has none
to copy), so nothing in DIR names the model whose tokenizer and image processor prepare the inputs. Both commands
refuse such a folder in one line with the route that works, which depends on the towers' kind.
"""

from __future__ import annotations

from pathlib import Path

from mfdeploy.artifacts.layout import EXPORT_MANIFEST, QUANTIZE_MANIFEST
from mfdeploy.artifacts.manifest import QuantizeManifest

# verb -> (who needs the tokenizer, the verb in prose, how the build's own INT8 towers run, what runs an export's DIR)
_VERBS = {
    "serve": ("the server needs", "serve", "mfdeploy serve {src} --backend ort-int8", "serve DIR"),
    "eval": ("prepare the inputs", "evaluate", "mfdeploy eval {src} --backend onnx-int8",
             "evaluate DIR with --backend onnx-int8"),
}


def no_export_manifest(path: Path, verb: str) -> str:
    """Why `path`, a folder of towers without export.json, cannot be run by `mfdeploy VERB`, and what runs instead.

    Args:
        path: the folder.
        verb: "serve" or "eval".
    """
    needs, doing, run_build, run_dir = _VERBS[verb]
    record = QuantizeManifest.read(path) if (path / QUANTIZE_MANIFEST).is_file() else None
    named = f"{EXPORT_MANIFEST} naming the model whose tokenizer and image processor {needs}"
    if record is None:
        return f"{path}: no {named} (export with `mfdeploy export MODEL --out DIR`)"
    source = record.data.get("source")
    source = source if isinstance(source, str) and source else "BUILD"
    why = f"with no {named}"
    if (Path(source) / EXPORT_MANIFEST).is_file():  # an export's quantized towers, whose export.json went missing
        return (f"{path}: quantized towers {why}: quantize the export they came from again (`mfdeploy quantize "
                f"{source} --out DIR`) and {run_dir}")
    if record.target == "ort" and record.mode in (None, "int8"):  # `--in-place` makes the build's own onnx_int8/
        scheme = record.data.get("scheme")
        opts = f" --scheme {scheme}" if scheme in ("static", "dynamic") else ""
        calib = record.data.get("calibration")
        calib = calib.get("source") if isinstance(calib, dict) else None
        if isinstance(calib, str) and Path(calib).is_file():  # a model other than the bundled one needs its pairs
            opts += f" --calib {calib}"
        return (f"{path}: ONNX Runtime INT8 towers of the build {source}, {why}: {doing} them from the build "
                f"(`mfdeploy quantize {source} --in-place{opts}`, then `{run_build.format(src=source)}`)")
    # TensorRT's Q/DQ towers (INT8 or FP8): `--in-place` refuses them, and a build runs only its own onnx_qdq/
    mode = " --mode fp8" if record.mode == "fp8" else ""
    return (f"{path}: TensorRT Q/DQ towers of the build {source}, {why}: quantize an export of the build instead "
            f"(`mfdeploy export {source} --out EXPORT`, then `mfdeploy quantize EXPORT --target trt{mode} --out DIR`) "
            f"and {run_dir}")


__all__ = ["no_export_manifest"]
