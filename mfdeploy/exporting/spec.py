"""The tower specs (`mfdeploy.artifacts.layout.TOWERS`, written down once) applied: model sizes filled in,
dynamic axes for the exporter, concrete shapes for engine profiles, and an export directory's towers and
model limits read back from its files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import EXPORT_MANIFEST, META_PREFIX, ONNX_FILES, PARITY_INPUTS, TOWERS
from mfdeploy.artifacts.tempdirs import moved_aside
from mfdeploy.errors import UserError, is_whole

MIN_OPSET = 17  # LayerNormalization is a single op from opset 17 on (TensorRT FP16 needs it unfused)
DYNAMIC_DIMS = ("batch", "text_len")
SAMPLES_FILE = PARITY_INPUTS  # the real parity inputs, kept for engine checks (which have no tokenizer)
__all__ = ["MIN_OPSET", "SAMPLES_FILE", "TOWERS", "check_onnx_dir", "check_opset",
           "concrete_shapes", "dynamic_axes", "fixed_text_len", "max_opset", "model_limits", "onnx_io", "qdq_routes",
           "tower_specs"]

def max_opset(exporter: str = "torchscript") -> int | None:
    """The newest opset torch's `exporter` ("torchscript" or "dynamo") writes; None where torch does not say."""
    try:
        from torch.onnx import _constants
    except ImportError:  # a torch without it: the exporter itself names an opset it cannot write
        return None
    name = "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET" if exporter == "torchscript" else "ONNX_MAX_OPSET"
    value = getattr(_constants, name, None)
    return value if isinstance(value, int) else None


def check_opset(opset: int, exporter: str = "torchscript") -> None:
    """Refuse an opset the export cannot write, before any model is loaded.

    Opsets before 17 decompose LayerNorm into ReduceMean/Pow/Sqrt, which overflows in TensorRT FP16; opsets
    past what the installed torch's exporter writes would fail only once the model is loaded and traced.
    """
    if not is_whole(opset):  # a Python caller's "17" or 17.0 (the CLI's is an int)
        raise UserError(f"--opset {opset!r:.40}: must be a whole number, not {type(opset).__name__}")
    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} is too old: use --opset {MIN_OPSET} or newer "
                        "(LayerNorm must export as one LayerNormalization op)")
    newest = max_opset(exporter)
    if newest is not None and opset > newest:
        raise UserError(f"opset {opset} is newer than torch's {exporter} exporter writes (up to {newest}): "
                        f"use --opset {MIN_OPSET}-{newest}")


def tower_specs(sizes: dict[str, int], inputs: dict[str, tuple[str, ...]] | None = None,
                fixed: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """The tower specs with model sizes filled in; dynamic axes keep their names.

    Args:
        sizes: values of the named model sizes, e.g. `{"image_size": 224, "embed_dim": 512}`.
        inputs: the inputs each tower of the model's family takes (`Adapter.tower_inputs`), a subset of the
            contract's, in its order; None: all of them (CLIP's).
        fixed: dynamic axes the family fixes, e.g. `{"text_len": 64}` for SigLIP's fixed-length text.
    """
    specs = copy.deepcopy(TOWERS)
    fixed = fixed or {}
    for tower, spec in specs.items():
        if inputs is not None:
            unknown = [n for n in inputs[tower] if n not in spec["inputs"]]
            if unknown:
                raise KeyError(f"the {tower} tower spec has no input {unknown[0]!r}")
            spec["inputs"] = {n: t for n, t in spec["inputs"].items() if n in inputs[tower]}
        for group in ("inputs", "outputs"):
            for tensor in spec[group].values():
                shape = []
                for dim in tensor["shape"]:
                    if isinstance(dim, str) and dim in fixed:
                        dim = int(fixed[dim])
                    elif isinstance(dim, str) and dim not in DYNAMIC_DIMS:
                        if dim not in sizes:
                            raise KeyError(f"tower spec needs the model size {dim!r}")
                        dim = int(sizes[dim])
                    shape.append(dim)
                tensor["shape"] = shape
    return specs


def dynamic_axes(spec: dict[str, Any]) -> dict[str, dict[int, str]]:
    """`{tensor name: {axis: axis name}}` for `torch.onnx.export(dynamic_axes=...)`."""
    axes: dict[str, dict[int, str]] = {}
    for group in ("inputs", "outputs"):
        for name, tensor in spec[group].items():
            named = {i: d for i, d in enumerate(tensor["shape"]) if isinstance(d, str)}
            if named:
                axes[name] = named
    return axes


def concrete_shapes(inputs: dict[str, dict[str, Any]], values: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Input shapes with every dynamic axis set from `values` (e.g. `{"batch": 8, "text_len": 77}`).

    Raises:
        UserError: an input has a dynamic axis that `values` does not set.
    """
    shapes = {}
    for name, tensor in inputs.items():
        dims = []
        for d in tensor["shape"]:
            if isinstance(d, str):
                if d not in values:
                    raise UserError(f"input {name!r} has an unknown dynamic axis {d!r} (expected {DYNAMIC_DIMS})")
                d = values[d]
            dims.append(int(d))
        shapes[name] = tuple(dims)
    return shapes


_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 6: "int32", 7: "int64"}


def onnx_io(path: Path) -> dict[str, Any]:
    """Read a tower's inputs, outputs and mfdeploy metadata back from an ONNX file (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def tensors(values) -> dict[str, dict[str, Any]]:
        out = {}
        for v in values:
            tt = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                     for d in tt.shape.dim]
            out[v.name] = {"dtype": _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)), "shape": shape}
        return out

    meta = {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"inputs": tensors(model.graph.input), "outputs": tensors(model.graph.output), "metadata": meta,
            "opset": opset}


def fixed_text_len(text_onnx: Path) -> int | None:
    """The text length a text tower's graph fixes (SigLIP's: `input_ids [B, 64]`), None when it is dynamic."""
    dims = onnx_io(text_onnx)["inputs"].get("input_ids", {}).get("shape", [])
    return dims[1] if len(dims) > 1 and isinstance(dims[1], int) and dims[1] > 0 else None


def check_onnx_dir(onnx_dir: Path) -> dict[str, Path]:
    """The tower files of an export directory, or a clear error when the directory is not one."""
    onnx_dir = Path(onnx_dir)
    if not onnx_dir.is_dir():
        raise UserError(moved_aside(onnx_dir) or f"{onnx_dir}: no such directory (expected the output of "
                        "`mfdeploy export`)")
    files = {tower: onnx_dir / name for tower, name in ONNX_FILES.items()}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise UserError(f"{onnx_dir}: not an ONNX export directory (missing {', '.join(missing)})")
    return files


# ONNX Runtime's integer ops, which TensorRT's ONNX parser cannot import (onnx-tensorrt's operator matrix)
TRT_UNSUPPORTED = frozenset({"ConvInteger", "DynamicQuantizeLinear", "MatMulInteger", "QLinearConv", "QLinearMatMul"})


def check_trt_graphs(files: dict[str, Path], int8: bool) -> str | None:
    """Refuse towers TensorRT cannot build, in one line: ONNX Runtime's INT8 towers (`quantize --target ort`: its
    integer ops, or QuantizeLinear with uint8 zero points, where TensorRT takes int8 ones of 0), and with `int8`
    towers without explicit quantization (no QuantizeLinear/DequantizeLinear nodes).

    Returns:
        what the towers' explicit quantization is: "fp8" (float8 scales' zero points or weights, ModelOpt's
        `--mode fp8`), "int8" (Q/DQ nodes otherwise), or None (no Q/DQ node: a float graph).
    """
    import onnx

    kinds: set[str] = set()
    for path in files.values():
        graph = onnx.load(str(path), load_external_data=False).graph
        ops = {n.op_type for n in graph.node}
        uint8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.UINT8}
        found = sorted(ops & TRT_UNSUPPORTED) + (["QuantizeLinear with uint8 zero points"] if any(
            n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in uint8 for n in graph.node) else [])
        if found:
            raise UserError(f"{path}: ONNX Runtime INT8 towers, which TensorRT cannot build ({', '.join(found)}): "
                            "build engines from the fp32 towers, or INT8 engines from QDQ towers: "
                            + _routes(path.parent))
        if int8 and "DequantizeLinear" not in ops:
            raise UserError(f"--int8: {path} holds no QuantizeLinear/DequantizeLinear nodes; quantize it first: "
                            + _routes(path.parent))
        if "DequantizeLinear" in ops:
            fp8 = any(t.data_type in FLOAT8_TYPES for t in graph.initializer)
            kinds.add("fp8" if fp8 else "int8")
    return "fp8" if "fp8" in kinds else "int8" if kinds else None


def qdq_routes(export: Path | None = None, build: str = "BUILD") -> str:
    """The ways to QDQ towers whose INT8 engines `bench` and `serve` then find: a build's own `onnx_qdq/`, which only
    `build --int8` makes (`quantize --in-place` rewrites `onnx_int8/`, and `quantize BUILD --out DIR` writes a
    folder with no export.json, which neither reads), or an export's quantized copy (`serve DIR --backend trt`).

    Args:
        export: the export directory to quantize, when known (else the build's route comes first).
        build: how to name the build.
    """
    from mfdeploy.extras import EXTRAS, missing

    extra = f" (with {EXTRAS['modelopt'].provides}: pip install 'mfdeploy[modelopt]')" if missing("modelopt") else ""
    exported = (f"`mfdeploy quantize {export or 'EXPORT'} --target trt --out QDQ`, then `mfdeploy engine QDQ --int8` "
                "and `mfdeploy serve QDQ --backend trt`")
    if export is not None:
        return exported + extra
    return (f"run `mfdeploy build` again with its options and --int8{extra}, which writes {build}/onnx_qdq/, then "
            f"`mfdeploy engine {build} --int8`; or `mfdeploy export {build} --out EXPORT`, " + exported)


def _routes(folder: Path) -> str:
    """`qdq_routes` from the fp32 towers `folder` holds or came from: the build it lies in, itself (an export), or
    the source its quantize.json records (an export, or a build)."""
    from mfdeploy.artifacts.layout import QUANTIZE_MANIFEST, is_build

    if is_build(folder.parent):  # a build's onnx/ or onnx_int8/, passed by itself
        return qdq_routes(build=str(folder.parent))
    if not (folder / QUANTIZE_MANIFEST).is_file():
        return qdq_routes(folder if (folder / EXPORT_MANIFEST).is_file() else None)
    try:
        source = json.loads((folder / QUANTIZE_MANIFEST).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        source = None
    if not isinstance(source, str) or not source:
        return qdq_routes()
    return qdq_routes(Path(source)) if (Path(source) / EXPORT_MANIFEST).is_file() else qdq_routes(build=source)


FLOAT8_TYPES = frozenset({17, 18, 19, 20})  # onnx.TensorProto.FLOAT8E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ


def model_limits(onnx_dir: Path) -> dict[str, int]:
    """Model sizes (image_size, max_text_len, embed_dim, ...) of an export directory.

    Read from the metadata the exporter writes into the ONNX files, then from
    `export.json`, so a directory exported by another tool still works as long
    as one of the two holds them.
    """
    files = check_onnx_dir(onnx_dir)
    limits: dict[str, int] = {}
    for path in files.values():
        for key, value in onnx_io(path)["metadata"].items():
            if value.lstrip("-").isdigit():
                limits.setdefault(key, int(value))
    manifest = Path(onnx_dir) / EXPORT_MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{manifest}: unreadable ({e})") from None
        for key, value in (data.get("model") or {}).items():
            if isinstance(value, int):
                limits.setdefault(key, value)
    return limits
