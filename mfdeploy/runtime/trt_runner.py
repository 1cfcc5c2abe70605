"""Native TensorRT runner over serialized `.plan` engines, through polygraphy (lazy imports)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mfdeploy import platform
from mfdeploy.artifacts.layout import (
    ENGINE_FILES,
    ONNX_DENSE_DIR,
    ONNX_DIR,
    ONNX_QDQ_DIR,
    OUTPUT_NAMES,
    TOWER_NAMES,
)
from mfdeploy.errors import first_line
from mfdeploy.runtime.base import BackendUnavailable, GraphRunner, graph_feed
from mfdeploy.runtime.build_dir import BuildDir


def check_tensorrt() -> None:
    """Raise `BackendUnavailable` unless the TensorRT Python package and a CUDA device are usable."""
    probe = platform.tensorrt()
    if not probe.ok:
        raise BackendUnavailable(probe.reason)


class TrtRunner(GraphRunner):
    """TensorRT engines `vision.plan`/`text.plan` (built by `mfdeploy engine`), run with polygraphy."""

    name = "trt"
    device = "cuda:0"

    def __init__(self, engines_dir: str | Path, towers: Sequence[str] = TOWER_NAMES,
                 how: str = "mfdeploy engine ONNX_DIR"):
        """Deserialize and activate one engine per tower.

        Args:
            engines_dir: directory with `vision.plan` and/or `text.plan`.
            towers: which towers to load.
            how: the command that builds the engines, for the message when they are missing.

        Raises:
            BackendUnavailable: no TensorRT, no CUDA device, no engines, or an
                engine built for another TensorRT version or GPU.
        """
        check_tensorrt()
        engines_dir = Path(engines_dir)
        missing = [ENGINE_FILES[t] for t in towers if not (engines_dir / ENGINE_FILES[t]).is_file()]
        if missing:
            raise BackendUnavailable(f"no engines in {engines_dir} ({', '.join(missing)}): build them on this "
                                     f"machine with `{how}`")
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes
        from polygraphy.backend.trt import TrtRunner as PolyTrtRunner

        self.runners = {}
        for tower in towers:
            path = engines_dir / ENGINE_FILES[tower]
            runner = PolyTrtRunner(EngineFromBytes(BytesFromPath(str(path))), name=f"mfdeploy-{tower}")
            try:
                runner.activate()
            except Exception as e:  # polygraphy raises PolygraphyException on deserialization failures
                self.close()
                raise BackendUnavailable(
                    f"cannot load {path} ({first_line(e)}): "
                    f"rebuild it on this machine with `{how}`"
                ) from None
            self.runners[tower] = runner

    def _run(self, tower: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
        from polygraphy.datatype import DataType

        runner = self.runners[tower]
        meta = runner.get_input_metadata()
        feed = graph_feed(tower, arrays, [(name, DataType.to_dtype(info.dtype, "numpy"))
                                          for name, info in meta.items()])
        outputs = runner.infer(feed)
        name = OUTPUT_NAMES[tower] if OUTPUT_NAMES[tower] in outputs else next(iter(outputs))
        out = outputs[name]
        return np.array(out, dtype=np.float32)  # a copy: polygraphy reuses its output buffers

    def close(self) -> None:
        for runner in getattr(self, "runners", {}).values():
            if runner.is_active:
                runner.deactivate()
        self.runners = {}


def engine_command(build: BuildDir, variant: str) -> str:
    """The `mfdeploy engine` command that makes a build's engines (`engines/` or `engines_dense/`) on this machine.

    With the precision and the profile bounds the build recorded (its engine
    stage computes them even where it skips the build); an `--int8` build's
    engines come from its `onnx_qdq/`. Shell-quoted: it can be pasted as it is.
    """
    fp16, _ = build.tensorrt_flags()
    engine = build.build.engine
    int8 = variant == "pruned" and engine is not None and engine.int8
    onnx_dir = build.path / (ONNX_QDQ_DIR if int8 else ONNX_DIR if variant == "pruned" else ONNX_DENSE_DIR)
    args = ["mfdeploy", "engine", str(onnx_dir), "--out", str(build.engines_dir(variant))]
    args += (["--int8"] if int8 else []) + (["--fp16"] if fp16 and not int8 else [])  # --int8 turns on FP16
    if engine is not None:
        for flag, value in (("--max-batch", engine.profile_max("vision", "pixel_values", 0)),
                            ("--max-text-len", engine.profile_max("text", "input_ids", 1))):
            args += [flag, str(value)] if value else []
    # the dense baseline keeps dense kernels; INT8 weights hide the 2:4 pattern from --sparse auto: as the build did
    sparse_on = int8 and engine is not None and engine.sparse  # int8 implies a record; restated for mypy
    sparse = ["--sparse", "off"] if variant == "dense" else ["--sparse", "on"] if sparse_on else []
    return shlex.join(args + sparse)
