"""TensorRT engines for the exported towers, built with polygraphy (imported lazily).

`build_engines` turns `vision.onnx`/`text.onnx` into `vision.plan`/`text.plan`
with one optimisation profile per tower, FP16 on request and TensorRT's 2:4
sparse kernels when the weights hold the pattern. It keeps the TensorRT log,
reads from it which layers were eligible for sparse math and which got a
sparse kernel, and compares each engine with ONNX Runtime through
polygraphy's Comparator. Without TensorRT or a CUDA GPU it builds nothing and
returns the reason plus the equivalent `trtexec` commands.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfdeploy import platform
from mfdeploy.artifacts.io import sha256, write_json
from mfdeploy.artifacts.layout import (
    ENGINE_FILES,
    ENGINE_RECORD,
    ENGINES_DIR,
    ONNX_DIR,
    ONNX_FILES,
    TEMP_OWNER,
    TIMING_CACHE,
    trt_log,
)
from mfdeploy.artifacts.tempdirs import make_temp_dir, sweep
from mfdeploy.artifacts.writable import as_write_error, check_folder_target, make_parents, remove_empty
from mfdeploy.errors import MfdeployError, UserError, first_line
from mfdeploy.exporting.engine_check import compare_with_onnxrt, engine_feeds
from mfdeploy.exporting.spec import (
    check_onnx_dir,
    check_trt_graphs,
    concrete_shapes,
    fixed_text_len,
    model_limits,
    onnx_io,
    qdq_routes,
)
from mfdeploy.exporting.trtexec import trtexec_commands, trtexec_paths
from mfdeploy.exporting.trtlog import capture_trt_log, parse_sparsity_log

if TYPE_CHECKING:
    import tensorrt as trt

SPARSE_MODES = ("auto", "on", "off")


class EngineError(MfdeployError):
    """TensorRT could not parse a tower or build its engine."""


def engine_status() -> dict[str, Any]:
    """Whether engines can be built here: `{"status": "available", ...}` or `{"status": "skipped", "reason"}`."""
    probe = platform.tensorrt()
    if not probe.ok:
        return {"status": "skipped", "reason": probe.reason}
    return {"status": "available", "tensorrt": probe.version, "cuda_devices": platform.cuda_device_count()[0]}


def engine_dirs(path: Path, out_dir: Path | None = None, int8: bool = False) -> tuple[Path, Path]:
    """Where to read the towers and write the engines: `(onnx dir, engines dir)`.

    A `mfdeploy build` directory gives its `onnx/` (with `int8`, its QDQ
    towers `onnx_qdq/`), checked against the sha256 in `build.json`, and, by
    default, its `engines/`, where `mfdeploy bench` and `serve` look for them;
    an export directory gives itself for both.

    Raises:
        UserError: a build directory without those towers, or an ONNX file changed since the build.
    """
    from mfdeploy.artifacts.layout import INCOMPLETE_BUILD, ONNX_QDQ_DIR, is_build
    from mfdeploy.models.integrity import verify_artifacts

    path = Path(path)
    if is_build(path):
        towers = ONNX_QDQ_DIR if int8 else ONNX_DIR
        if not (path / towers).is_dir():
            raise UserError(f"{path}: build directory has no {towers}/ " + (
                f"(the QDQ towers INT8 engines are built from): {qdq_routes(build=str(path))}" if int8 else
                INCOMPLETE_BUILD))
        verify_artifacts(path, (f"{towers}/",))
        return path / towers, Path(out_dir) if out_dir is not None else path / ENGINES_DIR
    return path, Path(out_dir) if out_dir is not None else path


def profile_shapes(onnx_dir: Path, max_batch: int, max_text_len: int | None = None, opt_batch: int | None = None,
                   opt_text_len: int | None = None) -> dict[str, dict[str, dict[str, list[int]]]]:
    """Optimisation profile per tower: input -> min/opt/max shapes, read from the ONNX inputs.

    Dynamic axes run from 1 to the maximum. The opt shapes default to the
    maxima: TensorRT tunes its kernels for the opt shape, and the largest
    batches are where the time goes.

    Raises:
        UserError: a bad size, `max_text_len` beyond the model's position embeddings, or other than the one
            length a fixed-length text tower reads (SigLIP's).
    """
    files = check_onnx_dir(onnx_dir)
    model_max = model_limits(onnx_dir).get("max_text_len")
    fixed = fixed_text_len(files["text"])
    if fixed is not None and max_text_len not in (None, fixed):
        raise UserError(f"--max-text-len {max_text_len}: this text tower reads exactly {fixed} tokens (its model "
                        "pads every text to that length); leave --max-text-len out")
    if max_text_len is None:
        if model_max is None:
            raise UserError(f"{onnx_dir}: cannot tell the model's maximum text length; pass --max-text-len")
        max_text_len = model_max
    if model_max is not None and max_text_len > model_max:
        raise UserError(f"--max-text-len {max_text_len} exceeds the model's {model_max} text positions")
    opt_batch = max_batch if opt_batch is None else opt_batch
    opt_text_len = max_text_len if opt_text_len is None else opt_text_len
    for flag, value, top in (("--max-batch", max_batch, None), ("--max-text-len", max_text_len, None),
                             ("opt batch", opt_batch, max_batch), ("opt text length", opt_text_len, max_text_len)):
        if value < 1 or (top is not None and value > top):
            raise UserError(f"{flag} must be 1 or more (got {value})" if top is None
                            else f"{flag} must be between 1 and {top} (got {value})")
    profiles = {}
    for tower, path in files.items():
        inputs = onnx_io(path)["inputs"]
        lo = concrete_shapes(inputs, {"batch": 1, "text_len": 1})
        opt = concrete_shapes(inputs, {"batch": opt_batch, "text_len": opt_text_len})
        hi = concrete_shapes(inputs, {"batch": max_batch, "text_len": max_text_len})
        profiles[tower] = {name: {"min": list(lo[name]), "opt": list(opt[name]), "max": list(hi[name])}
                           for name in inputs}
    return profiles


def engine_io(engine: trt.ICudaEngine) -> dict[str, Any]:
    """Name, direction, dtype, shape and profile-0 min/opt/max of each I/O tensor of a built engine."""
    import tensorrt as trt

    def as_list(d: trt.Dims) -> list[int]:
        return [d[i] for i in range(len(d))]

    io: dict[str, Any] = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry: dict[str, Any] = {"mode": "input" if is_input else "output",
                                 "dtype": str(engine.get_tensor_dtype(name)),
                                 "shape": as_list(engine.get_tensor_shape(name))}
        if is_input:
            entry["profile"] = [as_list(d) for d in engine.get_tensor_profile_shape(name, 0)]
        io[name] = entry
    return io


def build_engine(onnx_path: Path, plan_path: Path, inputs: dict[str, dict[str, list[int]]], fp16: bool,
                 sparse_weights: bool, timing_cache: Path, log_path: Path,
                 int8: bool = False, fp8: bool = False) -> tuple[Any, dict[str, Any]]:
    """Build and save one engine; return it with a record (file, hash, build time, sparsity from the log)."""
    from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path, save_engine
    from polygraphy.exception import PolygraphyException

    profile = Profile()
    for name, shapes in inputs.items():
        profile.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    # int8: explicit quantization, the scales come from the QDQ graph (no calibrator)
    config = CreateConfig(fp16=fp16, int8=int8 and not fp8, fp8=fp8, sparse_weights=sparse_weights,
                          profiles=[profile], load_timing_cache=str(timing_cache))
    start = time.perf_counter()
    with capture_trt_log() as lines:
        try:
            network = network_from_onnx_path(str(onnx_path))
            engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
        except PolygraphyException as e:
            raise EngineError(f"TensorRT could not build {onnx_path.name}: {first_line(e)}") from None
        finally:
            log_path.write_text("\n".join(lines) + "\n")
    seconds = time.perf_counter() - start
    save_engine(engine, path=str(plan_path))
    return engine, {"engine": plan_path.name, "bytes": plan_path.stat().st_size, "sha256": sha256(plan_path),
                    "build_s": round(seconds, 2), "log": log_path.name, "fp16": fp16, "int8": int8, "fp8": fp8,
                    "sparse_weights": sparse_weights,
                    "sparsity": parse_sparsity_log("\n".join(lines)), "io": engine_io(engine)}


def build_engines(onnx_dir: Path, fp16: bool = False, sparse: str = "auto", max_batch: int = 32,
                  max_text_len: int | None = None, *, opt_batch: int | None = None, opt_text_len: int | None = None,
                  out_dir: Path | None = None, check: bool = True,
                  record_file: str | None = ENGINE_RECORD, int8: bool = False) -> dict[str, Any]:
    """Build `vision.plan` and `text.plan` from an export directory, or say why not and how elsewhere.

    Args:
        onnx_dir: a `mfdeploy export` directory (`vision.onnx`, `text.onnx`), or a `mfdeploy build`
            directory (its `onnx/`, see `engine_dirs`).
        fp16: allow FP16 kernels (2:4 sparse tensor-core kernels exist for FP16/INT8, not FP32).
        sparse: "on" sets TensorRT's SPARSE_WEIGHTS flag, "off" does not, "auto" sets it for a
            tower whose weights hold 2:4 (polygraphy's sparsity check).
        max_batch: largest batch of the optimisation profiles.
        max_text_len: longest text of the profile (default and limit: the model's positions).
        opt_batch: batch TensorRT tunes for (default `max_batch`).
        opt_text_len: text length TensorRT tunes for (default `max_text_len`).
        out_dir: where engines, logs and the timing cache go (default `onnx_dir`; a build's `engines/`).
        check: compare each engine with ONNX Runtime (polygraphy Comparator).
        record_file: write the returned record as JSON into `out_dir` under this name (None: don't).
        int8: quantized engines from a QDQ directory (`mfdeploy quantize --target trt`, a build's `onnx_qdq/`),
            with FP16 for the float parts (fp16 is turned on); FP8 towers (`--mode fp8`) build with FP8 kernels.
            Q/DQ towers build this way without it too.

    Returns:
        `{"status": "built" | "parity_failed" | "skipped", ...}` with the profiles, the sparsity
        decision and the equivalent `trtexec` commands; "skipped" adds the one-line reason, the
        others the engines (file, hash, build time, sparse layers from the log, parity).

    Raises:
        UserError: not an export directory, or a bad option.
        EngineError: TensorRT failed to parse or build a tower.
    """
    from mfdeploy.exporting.sparsity import check_2to4

    if sparse not in SPARSE_MODES:
        raise UserError(f"--sparse must be one of {', '.join(SPARSE_MODES)} (got {sparse!r})")
    onnx_dir, out_dir = engine_dirs(onnx_dir, out_dir, int8)
    files = check_onnx_dir(onnx_dir)
    check_folder_target(out_dir)  # an --out that cannot be written fails now, not after the build
    # ONNX Runtime's INT8 towers, or --int8 without QDQ nodes: one line, here. Q/DQ towers build quantized with or
    # without --int8 (TensorRT refuses Q/DQ layers without the precision's flag); FP8 ones with FP8 kernels
    quantized = check_trt_graphs(files, int8)
    int8, fp8 = int8 or quantized is not None, quantized == "fp8"
    if int8:
        fp16 = True  # INT8 + FP16 fallback: the float parts of a QDQ graph run in FP16
    profiles = profile_shapes(onnx_dir, max_batch, max_text_len, opt_batch, opt_text_len)
    weights = {}
    if sparse != "off":
        for tower, path in files.items():
            report = check_2to4(path)
            weights[tower] = {k: report[k] for k in ("checker", "n_eligible", "n_sparse")}
    sparse_weights = {tower: sparse == "on" or (sparse == "auto" and weights[tower]["n_sparse"] > 0)
                      for tower in files}
    notes = []
    if any(sparse_weights.values()) and not fp16:
        # Sparse tensor cores need FP16/INT8 (or TF32, which polygraphy leaves off): FP32 layers stay dense.
        notes.append("2:4 sparse kernels need --fp16: an FP32 build will pick dense kernels")
    if sparse == "on" and weights and not any(w["n_sparse"] for w in weights.values()):
        notes.append("--sparse on, but no weight holds the 2:4 pattern: TensorRT will find nothing to sparsify")
    # the commands read onnx_dir and write out_dir, as this build does; their paths are relative to trtexec_cwd
    cwd, names, cache = trtexec_paths(onnx_dir, out_dir, {t: (ONNX_FILES[t], ENGINE_FILES[t]) for t in files})
    record: dict[str, Any] = {
        "fp16": fp16, "int8": int8, "fp8": fp8, "sparse": sparse, "sparse_weights": sparse_weights,
        "weights_2to4": weights, "profiles": profiles,
        "trtexec": trtexec_commands(profiles, fp16, sparse_weights, names, cache, int8=int8, fp8=fp8),
        "trtexec_cwd": cwd, "notes": notes,
    }
    status = engine_status()
    if status["status"] != "available":
        record = {"status": "skipped", "reason": status["reason"], **record}
    else:
        created: list[Path] = []
        staging: Path | None = None
        try:
            make_parents(out_dir, created)
            feeds = engine_feeds(onnx_dir, profiles) if check else {}
            engines = {}
            # Engines, logs and the timing cache are built in a staging folder and moved into out_dir only when
            # every tower built and matched ONNX Runtime: a failure (or Ctrl-C, SIGTERM) leaves no partial
            # plans, and one a SIGKILL leaves is removed by the next build here (it records its owner).
            sweep(out_dir)
            staging = make_temp_dir(out_dir, ".engines.tmp-")
            if (out_dir / TIMING_CACHE).is_file():
                shutil.copy2(out_dir / TIMING_CACHE, staging / TIMING_CACHE)
            for tower, path in files.items():
                engine, info = build_engine(path, staging / ENGINE_FILES[tower], profiles[tower], fp16,
                                            sparse_weights[tower], staging / TIMING_CACHE, staging / trt_log(tower),
                                            int8=int8, fp8=fp8)
                if check and feeds.get(tower):
                    from polygraphy.backend.trt import TrtRunner

                    info["parity"] = compare_with_onnxrt(path, TrtRunner(engine, name="tensorrt"), feeds[tower],
                                                         fp16, int8=int8)
                engines[tower] = info
            passed = all(e.get("parity", {}).get("passed", True) for e in engines.values())
            if passed:
                for built in staging.iterdir():
                    if built.name != TEMP_OWNER:
                        os.replace(built, out_dir / built.name)
        except BaseException as e:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            remove_empty(created)  # an --out folder this call made, left empty
            failure = as_write_error(e, out_dir, staging or out_dir) if isinstance(e, Exception) else None
            if failure is None:
                raise
            raise failure from None
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        record = {"status": "built" if passed else "parity_failed", "tensorrt": status["tensorrt"], **record,
                  "engines": engines, "parity": {t: e["parity"] for t, e in engines.items() if "parity" in e}}
    if record_file:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / record_file, record)
    return record
