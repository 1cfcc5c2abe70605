"""What a build directory gives a Triton model repository: the options, the models (one per tower and format,
each with the graph its config is read from) and `max_batch_size`, all checked before anything is written."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mfdeploy.artifacts.layout import (
    ENGINE_FILES,
    ENGINE_RECORD,
    ENGINES_DIR,
    INCOMPLETE_BUILD,
    INPUT_NAMES,
    ONNX_DIR,
    ONNX_FILES,
    ONNX_INT8_DIR,
    ONNX_QDQ_DIR,
    PRUNED_DIR,
    TOWER_NAMES,
    missing_onnx,
)
from mfdeploy.artifacts.manifest import BuildManifest, EngineRecord
from mfdeploy.artifacts.tempdirs import moved_aside
from mfdeploy.deploy.model_config import KINDS, GraphIO, read_graph
from mfdeploy.errors import UserError

DEFAULT_MAX_BATCH = 32  # without an engine profile recorded in the build
ONNX_KINDS = (*KINDS, "openvino")  # --onnx-kind: ONNX Runtime on the CPU or a GPU, or OpenVINO (CPU)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TritonConfig:
    """Options of `mfdeploy triton`.

    Attributes:
        prefix: model names start with it (`<prefix>_vision_onnx`); None: the build's model family (`clip`,
            `siglip`; `clip` for a build that records none).
        max_batch: Triton's `max_batch_size` for every model (None: the build's engine profile max, else 32);
            never above a TensorRT plan's profile.
        onnx_kind: "cpu" or "gpu": the instance kind of the fp32 ONNX models under ONNX Runtime (INT8 ones stay
            on CPU, where ONNX Runtime has their kernels; plans always run on a GPU); "openvino": every ONNX
            model, fp32 and INT8, under Triton's OpenVINO backend (CPU only).
        max_queue_delay_us: how long the dynamic batcher may hold a request to fill a batch.
    """

    prefix: str | None = None
    max_batch: int | None = None
    onnx_kind: str = "cpu"
    max_queue_delay_us: int = 100


@dataclass(frozen=True)
class ModelPlan:
    """One model of the repository: what file it serves and which graph states its inputs and outputs."""

    name: str
    tower: str
    fmt: str  # "onnx" | "plan" | "openvino" (the ONNX file under Triton's OpenVINO backend)
    variant: str  # "fp32" | "int8" | "engine"
    source: Path  # the file copied into the version folder
    io: GraphIO  # read from the source itself, or for a plan from the ONNX it was built from
    kind: str  # "cpu" | "gpu"


def validate(cfg: TritonConfig) -> None:
    """Check the options before any file is read.

    Raises:
        UserError: a bad prefix, --max-batch below 1, an unknown --onnx-kind or a negative queue delay.
    """
    if cfg.prefix is not None and not _NAME.fullmatch(cfg.prefix):
        raise UserError(f"--prefix {cfg.prefix!r}: use letters, digits, '_', '.' or '-' (it starts every model "
                        "name, and so a folder name)")
    if cfg.max_batch is not None and cfg.max_batch < 1:
        raise UserError(f"--max-batch must be 1 or more (got {cfg.max_batch})")
    if cfg.onnx_kind not in ONNX_KINDS:
        raise UserError(f"--onnx-kind must be one of {', '.join(ONNX_KINDS)} (got {cfg.onnx_kind!r})")
    if cfg.max_queue_delay_us < 0:
        raise UserError(f"--max-queue-delay-us must be 0 or more (got {cfg.max_queue_delay_us})")


def open_build(build: Path) -> BuildManifest:
    """A build directory's manifest, after checking it has both ONNX towers and they match build.json.

    Raises:
        UserError: not a directory, not a build, no `onnx/` towers, or a recorded file changed since.
    """
    from mfdeploy.models.integrity import verify_artifacts

    build = Path(build)
    if not build.is_dir():
        raise UserError(moved_aside(build) or f"{build}: not a directory (expected a build directory from "
                        "`mfdeploy build --out`)")
    manifest = BuildManifest.read(build)
    missing = missing_onnx(build)
    if missing:
        raise UserError(f"{build}: no {' or '.join(missing)} {INCOMPLETE_BUILD}")
    # not engines/: `mfdeploy engine BUILD` may rebuild them after the build (engines/engine.json then says how)
    verify_artifacts(build, (f"{ONNX_DIR}/", f"{ONNX_INT8_DIR}/", f"{ONNX_QDQ_DIR}/", f"{PRUNED_DIR}/"))
    return manifest


def engine_record(build: Path, manifest: BuildManifest) -> EngineRecord | None:
    """How `engines/` was built: its engine.json (`mfdeploy engine BUILD`) over build.json's `engine`."""
    if (Path(build) / ENGINES_DIR / ENGINE_RECORD).is_file():
        return EngineRecord.read(Path(build) / ENGINES_DIR)
    return manifest.engine


def plan_models(build: Path, cfg: TritonConfig, engine: EngineRecord | None) -> list[ModelPlan]:
    """The repository's models, every graph read (and checked) before anything is written."""
    build = Path(build)
    models = []
    fmt = "openvino" if cfg.onnx_kind == "openvino" else "onnx"
    for folder, variant, suffix in ((ONNX_DIR, "fp32", fmt), (ONNX_INT8_DIR, "int8", f"{fmt}_int8")):
        kind = cfg.onnx_kind if variant == "fp32" and fmt == "onnx" else "cpu"
        for tower in TOWER_NAMES:
            source = build / folder / ONNX_FILES[tower]
            if source.is_file():
                io = read_graph(source)
                for location in io.external:
                    if not (source.parent / location).is_file():
                        raise UserError(f"{source}: its external data file {source.parent / location} is missing "
                                        f"{INCOMPLETE_BUILD}")
                models.append(ModelPlan(f"{cfg.prefix}_{tower}_{suffix}", tower, fmt, variant, source, io, kind))
    # an INT8 build's engines come from the QDQ towers; either way the plan has the graph's inputs and outputs
    graphs = build / (ONNX_QDQ_DIR if engine is not None and engine.int8 else ONNX_DIR)
    for tower in TOWER_NAMES:
        plan = build / ENGINES_DIR / ENGINE_FILES[tower]
        if plan.is_file():
            graph = graphs / ONNX_FILES[tower]
            if not graph.is_file():
                raise UserError(f"{plan}: its ONNX graph {graph} is missing, so its inputs and outputs are unknown "
                                f"{INCOMPLETE_BUILD}")
            models.append(ModelPlan(f"{cfg.prefix}_{tower}_plan", tower, "plan", "engine", plan, read_graph(graph),
                                    "gpu"))
    return models


def resolve_max_batch(cfg: TritonConfig, models: list[ModelPlan], engine: EngineRecord | None,
                      warn: Callable[[str], None]) -> int:
    """`max_batch_size`: --max-batch, else the engine profile's max batch, else 32; never above a plan's profile.

    The build records its engine profiles even where the engines were skipped (no GPU): the batch they would
    be built for is then the default for the ONNX models too.

    Raises:
        UserError: --max-batch above the profile of a TensorRT plan in the repository.
    """
    recorded = [n for t in TOWER_NAMES if engine and (n := engine.profile_max(t, INPUT_NAMES[t][0], 0))]
    max_batch = cfg.max_batch if cfg.max_batch is not None else min(recorded, default=DEFAULT_MAX_BATCH)
    for m in models:
        if m.fmt != "plan":
            continue
        top = engine.profile_max(m.tower, m.io.inputs[0].name, 0) if engine else None
        if top is None:
            warn(f"{m.source}: no engine profile recorded, so max_batch_size {max_batch} is unchecked against it")
        elif max_batch > top:
            raise UserError(f"--max-batch {max_batch} is above the batch the TensorRT engine {m.source.name} was "
                            f"built for ({top}): pass --max-batch {top} or less, or rebuild the engines with a larger "
                            "--max-batch (`mfdeploy engine`)")
    return max_batch


