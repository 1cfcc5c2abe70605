"""`mfdeploy triton BUILD --out REPO`: a Triton Inference Server model repository for a build directory.

One model per tower and format, each `REPO/<model>/config.pbtxt` + `REPO/<model>/1/<file>`:

    <prefix>_{vision,text}_onnx       onnxruntime_onnx, from onnx/
    <prefix>_{vision,text}_onnx_int8  onnxruntime_onnx, from onnx_int8/ (a `build --int8`)
    <prefix>_{vision,text}_openvino[_int8]  instead of the two above with --onnx-kind openvino: backend openvino
    <prefix>_{vision,text}_plan       tensorrt_plan, from engines/*.plan (where they were built)

plus the tokenizer and image processor files (`preprocessing/`), a README and `triton.json`. Each config's
inputs and outputs are read from the ONNX graph the model was made from (a plan's: the graph it was built
from), and the whole repository is written atomically: a failure leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfdeploy._version import __version__
from mfdeploy.artifacts.layout import (
    BUILD_MANIFEST,
    INPUT_NAMES,
    PREPROCESSING_FILES,
    PRUNED_DIR,
    TRITON_CONFIG,
    TRITON_MODEL_FILES,
    TRITON_PREPROCESSING_DIR,
    TRITON_README,
    TRITON_RECORD,
    TRITON_VERSION_DIR,
)
from mfdeploy.artifacts.manifest import EngineRecord
from mfdeploy.deploy.model_config import KINDS, PLATFORMS, render_config
from mfdeploy.deploy.plan import (
    ModelPlan,
    TritonConfig,
    engine_record,
    open_build,
    plan_models,
    resolve_max_batch,
    validate,
)
from mfdeploy.errors import UserError
from mfdeploy.exporting.spec import META_PREFIX
from mfdeploy.platform import package_versions

_VERSIONS = ("onnx", "onnxruntime", "openvino", "transformers", "tokenizers", "tensorrt")


def _copy(src: Path, dst: Path, build: Path, files: dict[str, dict[str, Any]], tmp: Path) -> None:
    """Copy a build's file into the repository and record it: `{path in REPO: {source, sha256, bytes}}`."""
    from mfdeploy.artifacts.io import sha256

    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    files[dst.relative_to(tmp).as_posix()] = {"source": src.relative_to(build).as_posix(), "sha256": sha256(dst),
                                              "bytes": dst.stat().st_size}


def _write_model(tmp: Path, build: Path, m: ModelPlan, cfg: TritonConfig, max_batch: int) -> dict[str, Any]:
    """A model's folder: config.pbtxt and version 1; returns its files with their sources in the build."""
    version = tmp / m.name / TRITON_VERSION_DIR
    model_file = TRITON_MODEL_FILES[m.fmt]
    files: dict[str, dict[str, Any]] = {}
    if m.fmt == "onnx" and m.io.external:
        # Triton's layout for an ONNX model in several files: a folder named model.onnx holding model.onnx and
        # the files it references by relative path, which stay valid since they keep their place beside it.
        target = version / model_file / model_file
        for location in m.io.external:
            _copy(m.source.parent / location, target.parent / location, build, files, tmp)
    else:
        target = version / model_file
        if m.fmt == "openvino":  # OpenVINO reads the file the config names, its external data beside it
            for location in m.io.external:
                _copy(m.source.parent / location, version / location, build, files, tmp)
    _copy(m.source, target, build, files, tmp)
    config = tmp / m.name / TRITON_CONFIG
    config.write_text(render_config(m.name, m.fmt, m.io, max_batch, m.kind, cfg.max_queue_delay_us),
                      encoding="utf-8")
    return dict(sorted(files.items()))


def _copy_preprocessing(build: Path, tmp: Path) -> list[str]:
    """The checkpoint's tokenizer and image processor files into `preprocessing/`, checked by loading them.

    A client loads them the same way: a missing or unusable file is named now, not at the client.
    """
    from mfdeploy.models.processors import load_image_processor, load_tokenizer, one_line

    src, dst = build / PRUNED_DIR, tmp / TRITON_PREPROCESSING_DIR
    load_tokenizer(src)  # names the missing file of the build's own checkpoint
    load_image_processor(src)
    copied = [name for name in PREPROCESSING_FILES if (src / name).is_file()]
    dst.mkdir(parents=True, exist_ok=True)
    for name in copied:
        shutil.copyfile(src / name, dst / name)
    try:
        load_tokenizer(dst)
        load_image_processor(dst)
    except UserError as e:
        raise UserError(f"{src}: its tokenizer or image processor needs more than the files copied for clients "
                        f"({', '.join(copied)}): {one_line(e, 200)}") from None
    return [f"{TRITON_PREPROCESSING_DIR}/{name}" for name in copied]


def _limits(models: list[ModelPlan], engine: EngineRecord | None) -> dict[str, int | None]:
    meta: dict[str, str] = {}
    for m in models:
        meta.update({k[len(META_PREFIX):]: v for k, v in m.io.metadata.items() if k.startswith(META_PREFIX)})

    def size(key: str) -> int | None:
        return int(meta[key]) if meta.get(key, "").isdigit() else None

    plan_text = engine.profile_max("text", INPUT_NAMES["text"][0], 1) if engine else None
    return {"max_text_len": size("max_text_len"), "image_size": size("image_size"), "embed_dim": size("embed_dim"),
            "plan_max_text_len": plan_text if any(m.fmt == "plan" and m.tower == "text" for m in models) else None}


def _scoring(build: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """How a client turns the towers' cosines into the model's scores: the family's function (a softmax over the
    texts, or one sigmoid per pair) and its constants, which the ONNX graphs do not hold."""
    from mfdeploy.artifacts.layout import PRUNED_DIR
    from mfdeploy.models.registry import scoring_constants

    scale, bias = scoring_constants(build / PRUNED_DIR)
    function = (manifest.get("conventions") or {}).get("scoring", "softmax")
    return {"function": function, "logit_scale": scale, "logit_bias": bias,
            "formula": ("sigmoid(logit_scale * cosine + logit_bias), per pair" if function == "sigmoid" else
                        "softmax over the texts of logit_scale * cosine")}


def write_triton_repo(build: Path, out: Path, cfg: TritonConfig, force: bool = False,
                      warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a Triton model repository for a build directory; returns the record written as `triton.json`.

    Args:
        build: a `mfdeploy build --out` directory.
        out: the repository to create (replaced with `force` only if mfdeploy wrote it).
        cfg: the options.
        force: replace an existing `out` that mfdeploy wrote.
        warn: called with one-line warnings (default: none shown).

    Raises:
        UserError: bad options, not a build (or no `onnx/`), --max-batch above a plan's profile, an
            unusable `out`; nothing is written then.
    """
    from mfdeploy.artifacts.io import atomic_dir, check_out_dir, file_records, sha256, write_json
    from mfdeploy.deploy.readme import render_readme

    warn = warn or (lambda msg: None)
    validate(cfg)
    build, out = Path(build).expanduser(), Path(out).expanduser()
    manifest = open_build(build)
    if cfg.prefix is None:  # models named after the build's family: siglip_text_onnx, clip_vision_plan, ...
        cfg = dataclasses.replace(cfg, prefix=str(manifest.data.get("family") or "clip"))
    real_build, real_out = build.resolve(), out.resolve()
    if real_out == real_build:
        raise UserError(f"--out {out} would replace the build directory {build} itself: choose another --out")
    if real_out in real_build.parents:
        raise UserError(f"--out {out} holds the build directory {build}: replacing it would delete the build; "
                        "choose another --out")
    if real_build in real_out.parents:  # a copy of the build's files inside it: serve, --force and hashes trip on it
        raise UserError(f"--out {out} is inside the build {build}: a Triton repository holds copies of the build's "
                        "files; put it outside the build")
    check_out_dir(out, force)
    engine = engine_record(build, manifest)
    models = plan_models(build, cfg, engine)
    max_batch = resolve_max_batch(cfg, models, engine, warn)
    limits = _limits(models, engine)
    with atomic_dir(out, force) as tmp:
        preprocessing = _copy_preprocessing(build, tmp)  # first: small, and checked by loading it
        entries = {}
        for m in models:
            files = _write_model(tmp, build, m, cfg, max_batch)
            entries[m.name] = {
                "tower": m.tower, "format": m.fmt, "variant": m.variant, "platform": PLATFORMS[m.fmt],
                "instance_kind": KINDS[m.kind], "config": f"{m.name}/{TRITON_CONFIG}",
                "source": m.source.relative_to(build).as_posix(), "files": files,
                "io_from": m.io.path.relative_to(build).as_posix(),
                "inputs": [t.to_json() for t in m.io.inputs], "outputs": [t.to_json() for t in m.io.outputs]}
        record = {
            "mfdeploy_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build": str(real_build), "build_sha256": sha256(build / BUILD_MANIFEST),
            "model": manifest.model, "family": manifest.data.get("family"), "method": manifest.method,
            "ratio": manifest.ratio, "pattern": manifest.pattern,
            "max_batch": max_batch, "max_queue_delay_microseconds": cfg.max_queue_delay_us,
            "onnx_kind": KINDS.get(cfg.onnx_kind, cfg.onnx_kind), "limits": limits, "models": entries,
            "preprocessing": preprocessing,
            "scoring": _scoring(build, manifest.data),
            "engine": ({"tensorrt": engine.data.get("tensorrt"), "int8": engine.int8, "fp16": engine.fp16,
                        "profiles": engine.profiles} if any(m.fmt == "plan" for m in models) and engine else None),
            "served_by_triton": False,  # no tritonserver loaded it when it was written
            "versions": {"mfdeploy": __version__, **package_versions(_VERSIONS)},
        }
        (tmp / TRITON_README).write_text(render_readme(record), encoding="utf-8")
        record["artifacts"] = file_records(tmp)
        write_json(tmp / TRITON_RECORD, record)
    return record
