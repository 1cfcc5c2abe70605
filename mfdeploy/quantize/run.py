"""The quantize stage: INT8/FP8 towers from fp32 towers, parity-gated, with `quantize.json` (`mfdeploy quantize`).

`quantize_towers` does the work into a directory it is given (a build's
temporary directory, or the one `run_quantize` renames into place), so a
failure anywhere (bad input, quantizer error, parity gate) leaves nothing
half written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfdeploy._version import __version__
from mfdeploy.artifacts.layout import EXPORT_MANIFEST, ONNX_DIR, ONNX_FILES, QUANTIZE_MANIFEST, is_build
from mfdeploy.artifacts.manifest import ExportManifest
from mfdeploy.artifacts.tempdirs import moved_aside
from mfdeploy.data.batching import CalibSource, parse_calib
from mfdeploy.errors import UserError
from mfdeploy.exporting.external import external_data_files, model_bytes
from mfdeploy.exporting.spec import check_onnx_dir
from mfdeploy.platform import package_versions
from mfdeploy.quantize.gate import MIN_COSINE, check_mode, check_towers, failure_line, gate_feeds
from mfdeploy.zoo import is_bundled

TARGETS = ("ort", "trt")
MODES = ("int8", "fp8")
_VERSIONS = ("onnx", "onnxruntime", "nvidia-modelopt")


@dataclass
class QuantizeConfig:
    """What `mfdeploy quantize` (and `build --int8`) does; built by the CLI, never from CLI objects."""

    target: str = "ort"
    mode: str = "int8"
    scheme: str = "auto"  # ONNX Runtime only: static (calibrated QDQ) | dynamic | auto (per tower: AUTO_SCHEME)
    calib: str | None = None  # "shapes" | PAIRS.jsonl; None = shapes
    calib_samples: int = 128
    batch_size: int = 32
    keep_float: list[str] = field(default_factory=list)  # fnmatch globs of node names kept in float
    min_cosine: float = MIN_COSINE
    verbose: bool = False


def validate(cfg: QuantizeConfig) -> CalibSource:
    """Check the options before any work; returns the calibration source."""
    if cfg.target not in TARGETS:
        raise UserError(f"--target {cfg.target}: expected one of {', '.join(TARGETS)}")
    if cfg.mode not in MODES:
        raise UserError(f"--mode {cfg.mode}: expected one of {', '.join(MODES)}")
    check_mode(cfg.mode, cfg.target)  # fp8: --target trt, and an ONNX Runtime its gate can run the towers on
    if cfg.target == "ort":
        check_scheme(cfg.scheme)
    elif cfg.scheme not in ("auto", "static"):  # it was ignored: TensorRT's QDQ towers are calibrated (static)
        raise UserError(f"--scheme {cfg.scheme} applies to --target ort only: --target {cfg.target} quantizes "
                        "statically (calibrated QDQ); drop --scheme")
    for what, value in (("--calib-samples", cfg.calib_samples), ("calibration batch size", cfg.batch_size)):
        if value <= 0:  # each named by itself, as prune names them (the batch size is no option of `quantize`)
            raise UserError(f"{what} {value}: must be positive")
    if not 0.0 < cfg.min_cosine <= 1.0:
        raise UserError(f"parity threshold {cfg.min_cosine}: must be in (0, 1]")
    calibrated = cfg.target == "trt" or cfg.scheme != "dynamic"  # its images decoded whole now, not mid-calibration
    return parse_calib(cfg.calib if cfg.calib is not None else "shapes", samples=cfg.calib_samples, decode=calibrated)


def check_scheme(scheme: str, option: str = "--scheme") -> str:
    """`scheme` if ONNX Runtime's quantizer takes it (static, dynamic) or it is auto.

    Raises:
        UserError: another value, in one line naming `option` and the choices.
    """
    from mfdeploy.quantize.ort import SCHEMES

    if scheme not in (*SCHEMES, "auto"):
        raise UserError(f"{option} {scheme}: expected one of {', '.join(SCHEMES)} or auto")
    return scheme


def tower_scheme(cfg: QuantizeConfig, tower: str) -> str:
    """The ONNX Runtime scheme a tower gets: `--scheme`, or for auto the measured choice (`AUTO_SCHEME`)."""
    from mfdeploy.quantize.ort import AUTO_SCHEME

    if cfg.target != "ort":
        return "static"  # ModelOpt calibrates
    return AUTO_SCHEME[tower] if cfg.scheme == "auto" else cfg.scheme


def resolve_source(src: Path) -> tuple[Path, str]:
    """The fp32 towers of SRC and the model (checkpoint) whose processor and tokenizer make real inputs.

    SRC is a build directory (`onnx/` + `pruned/`) or an export directory (towers, `export.json` naming the model).
    """
    src = Path(src)
    if not src.is_dir():
        what = "not a directory" if src.exists() else "no such directory"
        raise UserError(moved_aside(src) or f"{src}: {what} (expected an ONNX export or build directory)")
    if any((src / ONNX_DIR / name).is_file() for name in ONNX_FILES.values()) or is_build(src):
        check_onnx_dir(src / ONNX_DIR)
        return src / ONNX_DIR, str(src)
    if not any((src / name).is_file() for name in ONNX_FILES.values()):
        raise UserError(f"{src}: no towers to quantize (expected vision.onnx and text.onnx, or a build directory "
                        "with onnx/): run `mfdeploy export` or `mfdeploy build` first")
    if (src / QUANTIZE_MANIFEST).is_file():  # its weight nodes are int8 already: "no weight node to quantize"
        raise UserError(f"{src}: its towers are quantized already ({QUANTIZE_MANIFEST}): quantize the fp32 towers "
                        f"they came from{_source_of(src)}")
    check_onnx_dir(src)
    try:
        model = ExportManifest.read(src).model_source
    except UserError:
        model = None
    if not model:
        raise UserError(f"{src}: no readable {EXPORT_MANIFEST} naming the model, whose processor and tokenizer "
                        "make the calibration inputs (export with `mfdeploy export`)")
    return src, model


def _source_of(quantized: Path) -> str:
    """`, SOURCE` as a quantize.json records it ('' when it cannot be read)."""
    try:
        source = json.loads((quantized / QUANTIZE_MANIFEST).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return ""
    return f", {source}" if isinstance(source, str) and source else ""


def _copy_metadata(src: Path, dst: Path) -> None:
    """Carry the exporter's `mfdeploy.*` metadata (model sizes the engine profiles read) over to the quantized graph."""
    import onnx

    from mfdeploy.exporting.spec import META_PREFIX

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props
            if p.key.startswith(META_PREFIX)}
    model = onnx.load(str(dst), load_external_data=False)  # external weights stay where they are, untouched
    have = {p.key for p in model.metadata_props}
    if set(meta) - have:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **meta})
        onnx.save(model, str(dst))


def quantize_towers(adapter, fp32_dir: Path, out_dir: Path, cfg: QuantizeConfig,
                    warn: Callable[[str], None] | None = None, gate_inputs: dict | None = None,
                    src: Path | None = None) -> dict[str, Any]:
    """Quantize `fp32_dir`'s towers into `out_dir` (which must exist), gate them, write `quantize.json`.

    Args:
        adapter: the model the towers were exported from (its processor and tokenizer make the inputs).
        fp32_dir: directory with the fp32 `vision.onnx` and `text.onnx`.
        out_dir: where the quantized towers and `quantize.json` go.
        cfg: what to do.
        warn: called with one-line warnings (e.g. fewer calibration pairs than asked for).
        gate_inputs: precomputed `gate.gate_feeds(adapter)` (a build quantizes twice with the same inputs).
        src: the export or build directory `mfdeploy quantize` was given, recorded as `source`.

    Returns:
        The record written to `out_dir/quantize.json`.

    Raises:
        UserError: bad options, a quantizer failure, or a tower below the parity gate.
    """
    from mfdeploy.quantize.calib import calibration_feeds
    from mfdeploy.quantize.nodes import plan_nodes

    source = validate(cfg)
    files = check_onnx_dir(fp32_dir)
    t0 = time.perf_counter()
    _check_keep_float(cfg.keep_float, files)
    schemes = {tower: tower_scheme(cfg, tower) for tower in files}
    need_calib = cfg.target == "trt" or "static" in schemes.values()
    if need_calib and cfg.calib is None and not is_bundled(adapter.model_id):
        raise UserError(f"--calib is required to quantize {adapter.model_id}: a JSONL file of image-caption "
                        "pairs (the shapes world only fits the bundled model), or --scheme dynamic")
    feeds, used = calibration_feeds(adapter, source, cfg.calib_samples, cfg.batch_size, warn) if need_calib \
        else ({"vision": [], "text": []}, 0)
    calib_s = time.perf_counter() - t0
    towers: dict[str, Any] = {}
    for tower, path in files.items():
        plan = plan_nodes(path, cfg.keep_float)
        if not plan["quantize"]:  # the quantizers read an empty node list as "every node"
            raise UserError(f"--keep-float {' '.join(cfg.keep_float)} keeps every quantizable node of the {tower} "
                            "tower in float: nothing is left to quantize; narrow the globs" if cfg.keep_float
                            else f"{path}: no weight node to quantize")
        dst = Path(out_dir) / path.name
        start = time.perf_counter()
        if cfg.target == "ort":
            from mfdeploy.quantize.ort import quantize_ort

            how = quantize_ort(path, dst, plan["quantize"], feeds[tower], schemes[tower], cfg.verbose)
        else:
            from mfdeploy.quantize.trt import quantize_trt

            how = quantize_trt(path, dst, plan["quantize"], feeds[tower], cfg.mode, cfg.verbose)
        _copy_metadata(path, dst)
        fp32_bytes, q_bytes = model_bytes(path), model_bytes(dst)  # with any external data files
        kept = how.pop("kept_float", {})  # nodes the quantizer could not take on this runtime
        towers[tower] = {**how, "file": dst.name, "quantized_nodes": [n for n in plan["quantize"] if n not in kept],
                         "float_nodes": {**plan["float"], **kept}, "bytes": q_bytes, "fp32_bytes": fp32_bytes,
                         "size_ratio": round(q_bytes / fp32_bytes, 4), "seconds": round(time.perf_counter() - start, 2)}
    gate = check_towers(fp32_dir, out_dir, gate_inputs or gate_feeds(adapter), cfg.min_cosine)
    what = f"the {cfg.mode} towers (--target {cfg.target})"
    if not gate["passed"]:
        raise UserError(failure_line(gate, what))
    record = {
        "mfdeploy_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": adapter.model_id, **({"source": str(Path(src).resolve())} if src is not None else {}),
        "target": cfg.target, "mode": cfg.mode,
        "scheme": cfg.scheme if cfg.target == "ort" else "static",  # per tower: towers[tower]["scheme"]
        "calibration": {"source": source.describe() if need_calib else None, "requested": cfg.calib_samples,
                        "samples": used, "batch_size": cfg.batch_size, "seconds": round(calib_s, 2)},
        "keep_float": cfg.keep_float, "towers": towers, "parity": gate,
        "versions": {"mfdeploy": __version__, **package_versions(_VERSIONS)},
    }
    from mfdeploy.artifacts.io import write_json

    write_json(Path(out_dir) / QUANTIZE_MANIFEST, record)
    return record


def _check_keep_float(globs: list[str], files: dict[str, Path]) -> None:
    """Refuse a --keep-float glob that matches no weight node of either tower: a typo would be recorded as kept."""
    from mfdeploy.errors import check_globs
    from mfdeploy.quantize.nodes import weight_nodes

    if globs:
        check_globs("--keep-float", globs, [name for path in files.values() for name in weight_nodes(path)],
                    "weight node of the towers")


def run_quantize(src: Path, out: Path, cfg: QuantizeConfig, force: bool = False,
                 warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`mfdeploy quantize SRC --out DIR`: quantized towers + `quantize.json` in DIR, written atomically."""
    from mfdeploy.artifacts.io import atomic_dir, check_out_dir
    from mfdeploy.extras import require
    from mfdeploy.models import load

    src, out = Path(src).expanduser(), Path(out).expanduser()  # `--out=~/q`: no shell expands a ~ after the =
    validate(cfg)  # bad options fail before the model loads
    require("quantize", target=cfg.target)  # a missing ModelOpt too, not after calibration
    fp32_dir, model = resolve_source(src)
    _verify_source(src, fp32_dir, model)
    check_out_dir(out, force, sources=(src,))
    adapter = load(model)
    with atomic_dir(out, force) as tmp:
        record = quantize_towers(adapter, fp32_dir, tmp, cfg, warn, src=src)
        if (fp32_dir / EXPORT_MANIFEST).is_file():
            _export_manifest(fp32_dir, tmp)
    return record


def _verify_source(src: Path, fp32_dir: Path, model: str) -> None:
    """The towers (and an export's parity inputs) against their manifest's sha256, and an export's model (one held
    in memory names none), before anything reads them: a cut file or a lost model named in one line."""
    from mfdeploy.models.integrity import verify_artifacts
    from mfdeploy.models.loader import recorded_checkpoint

    if fp32_dir == src:  # an export directory: export.json records every file in it
        verify_artifacts(src, ("",), manifests=(EXPORT_MANIFEST,))
        recorded_checkpoint(model, src / EXPORT_MANIFEST)
    else:  # a build directory: build.json records onnx/ (pruned/ is checked when the model loads)
        verify_artifacts(src, (f"{ONNX_DIR}/",))


def _export_manifest(fp32_dir: Path, out_dir: Path) -> None:
    """Make `out_dir` an export directory as `fp32_dir` is, so `mfdeploy serve` and `mfdeploy engine` take it.

    Its `export.json` is the source's (the model, its conventions, the towers' I/O), with the files recorded
    again and `quantized` saying where the towers came from; the source's parity inputs come along.
    """
    import shutil

    from mfdeploy.artifacts.io import file_records, write_json
    from mfdeploy.artifacts.layout import PARITY_INPUTS
    from mfdeploy.exporting.onnx_export import inspect_graph

    if (fp32_dir / PARITY_INPUTS).is_file():
        shutil.copy2(fp32_dir / PARITY_INPUTS, out_dir / PARITY_INPUTS)
    manifest = ExportManifest.read(fp32_dir).data
    manifest["quantized"] = {"from": str(fp32_dir.resolve()), "record": QUANTIZE_MANIFEST,
                             "note": "parity is the fp32 export's against PyTorch; quantize.json has the "
                                     "quantized towers' against the fp32 ones"}
    towers = manifest.get("towers")
    towers = towers if isinstance(towers, dict) else {}
    for tower, name in ONNX_FILES.items():  # the quantized files, not the fp32 ones: ops, opset (QDQ: 19), data
        if isinstance(towers.get(tower), dict) and (out_dir / name).is_file():
            data = external_data_files(out_dir / name)  # ModelOpt writes one file where the source had two
            towers[tower].update(graph=inspect_graph(out_dir / name), external_data=bool(data),
                                 data_file=data[0].relative_to(out_dir).as_posix() if data else None)
    opsets = [t["graph"]["opset"] for t in towers.values() if isinstance(t, dict) and "graph" in t]
    if opsets:
        manifest["opset"] = max(opsets)
    manifest["files"] = file_records(out_dir, recursive=False)
    write_json(out_dir / EXPORT_MANIFEST, manifest)
