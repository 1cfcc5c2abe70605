"""ONNX Runtime runner: CPU, CUDA and TensorRT execution providers over `vision.onnx`/`text.onnx`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy import platform
from mfdeploy.artifacts.layout import ONNX_FILES, QUANTIZE_MANIFEST, TOWER_NAMES
from mfdeploy.artifacts.manifest import QuantizeManifest
from mfdeploy.errors import UserError, first_line
from mfdeploy.ortsession import ort_session
from mfdeploy.platform import ORT_PROVIDERS as PROVIDERS
from mfdeploy.runtime.base import BackendUnavailable, GraphRunner, graph_feed
from mfdeploy.runtime.build_dir import missing_tower

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32}


def check_provider(provider: str) -> None:
    """Raise `BackendUnavailable` when `provider` cannot run here (before any session is built)."""
    probe = platform.ort_provider(provider)
    if not probe.ok:
        raise BackendUnavailable(probe.reason)


class OrtRunner(GraphRunner):
    """ONNX Runtime over an export directory holding `vision.onnx` and `text.onnx`.

    Sessions are built eagerly, so a provider that cannot run is reported at
    construction (`BackendUnavailable`), including the case ONNX Runtime hides:
    a GPU provider that fails to initialise and is silently replaced by the CPU.
    """

    def __init__(
        self,
        onnx_dir: str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        fp16: bool = False,
        sparse: bool = False,
        towers: Sequence[str] = TOWER_NAMES,
        max_batch: int | None = None,
        max_text_len: int | None = None,
        spin: bool = True,
    ):
        """Build one session per tower.

        Args:
            onnx_dir: directory with `vision.onnx` and/or `text.onnx`.
            provider: "cpu", "cuda" or "tensorrt".
            threads: intra-op threads (default: the physical cores).
            cache_dir: TensorRT engine and timing cache directory (TensorRT only).
            fp16: let TensorRT build FP16 kernels (TensorRT only).
            sparse: let TensorRT use 2:4 sparse tensor cores (TensorRT only).
            towers: which towers to load.
            max_batch: TensorRT optimisation profile: largest batch (with
                `max_text_len`); without it TensorRT rebuilds when shapes grow.
            max_text_len: TensorRT optimisation profile: longest text.
            spin: let idle intra-op threads spin; turn off when several
                sessions take turns, so one session's spinning does not slow the next.

        Raises:
            BackendUnavailable: the provider cannot run on this machine.
            UserError: a model file is missing or unreadable.
        """
        check_provider(provider)
        self.provider = provider
        self.name = {"cpu": "ort-cpu", "cuda": "ort-cuda", "tensorrt": "ort-trt"}[provider]
        self.device = "cpu" if provider == "cpu" else "cuda:0"
        self.threads = threads or platform.physical_cores()
        self.onnx_dir = Path(onnx_dir)
        if (self.onnx_dir / QUANTIZE_MANIFEST).is_file():  # `mfdeploy quantize` output: INT8 GEMMs, the rest f32
            fp8 = QuantizeManifest.read(self.onnx_dir).mode == "fp8"  # TensorRT's: only it has fp8 kernels; the
            self.precision = ("fp8+f32" if provider == "tensorrt" else "f32") if fp8 else "int8+f32"  # others
            # dequantize every fp8 weight and activation to f32 matmuls (no integer or fp8 op is left in the graph)
        self.sessions: dict[str, Any] = {}  # tower -> onnxruntime.InferenceSession
        for tower in towers:
            path = self.onnx_dir / ONNX_FILES[tower]
            if not path.is_file():
                raise missing_tower(path)
            profile = self._profile(tower, max_batch, max_text_len)
            providers = self._providers(cache_dir, fp16, sparse, profile)
            try:
                session = ort_session(path, providers, threads=self.threads, spin=spin)
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeError types
                if provider != "cpu":
                    raise BackendUnavailable(f"{PROVIDERS[provider]} failed on {path.name}: {first_line(e)}") from None
                raise UserError(f"{path}: cannot load ({first_line(e)})") from None
            got = session.get_providers()
            if PROVIDERS[provider] not in got:
                # ORT logs the failure and carries on with the CPU: do not measure the CPU under a GPU name
                raise BackendUnavailable(
                    f"{PROVIDERS[provider]} could not be initialised (ONNX Runtime fell back to {', '.join(got)})"
                )
            self.sessions[tower] = session

    def _providers(self, cache_dir, fp16: bool, sparse: bool, profile: dict[str, str]) -> list:
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": 0})
        if self.provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        trt: dict[str, str] = {
            "device_id": "0",
            "trt_fp16_enable": "1" if fp16 else "0",
            "trt_sparsity_enable": "1" if sparse else "0",
            **profile,
        }
        if cache_dir is not None:
            cache = Path(cache_dir)
            cache.mkdir(parents=True, exist_ok=True)
            trt.update({
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "1",
                "trt_timing_cache_path": str(cache),
            })
        # nodes TensorRT cannot take run on CUDA, then CPU, as ORT partitions them
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]

    def _profile(self, tower: str, max_batch: int | None, max_text_len: int | None) -> dict[str, str]:
        """TensorRT optimisation profile shapes (`trt_profile_*_shapes`) read from the model's inputs."""
        if self.provider != "tensorrt" or max_batch is None:
            return {}
        import onnx

        model = onnx.load(str(self.onnx_dir / ONNX_FILES[tower]), load_external_data=False)
        shapes: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
        bounds = {"min": (1, 1), "opt": (max_batch, max_text_len or 1), "max": (max_batch, max_text_len or 1)}
        for inp in model.graph.input:
            dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]  # 0 = dynamic
            for key, (batch, length) in bounds.items():
                # dim 0 is the batch; any other dynamic dim is the text length
                shape = [batch] + [d if d > 0 else length for d in dims[1:]]
                shapes[key].append(f"{inp.name}:{'x'.join(map(str, shape))}")
        return {f"trt_profile_{k}_shapes": ",".join(v) for k, v in shapes.items()}

    def _run(self, tower: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
        session = self.sessions.get(tower)
        if session is None:
            raise RuntimeError(f"{self.name}: the {tower} tower was not loaded")
        feed = graph_feed(tower, arrays, [(inp.name, _NUMPY.get(inp.type)) for inp in session.get_inputs()])
        (out,) = session.run([session.get_outputs()[0].name], feed)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.sessions.clear()
