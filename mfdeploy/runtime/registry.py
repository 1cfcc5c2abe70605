"""Backends by name, and the build directory they read their artifacts from.

    torch     PyTorch eager (CPU), from `pruned/` (dense: `build.json["model"]`)
    torch-cuda         PyTorch on a CUDA GPU in fp16, same checkpoints
    torch-cuda-sparse  the same with every 2:4 linear on the sparse tensor cores (to_sparse_semi_structured)
    ort-cpu   ONNX Runtime, CPU EP, from `onnx/` (dense: `onnx_dense/`)
    ort-cuda  ONNX Runtime, CUDA EP, same files
    ort-trt   ONNX Runtime, TensorRT EP, same files; engine/timing caches in `ort_trt_cache/`
    trt       TensorRT engines `engines/*.plan` (dense: `engines_dense/`), via polygraphy

The "int8" variant is a build's `onnx_int8/` (`build --int8`), for the ONNX Runtime backends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import (
    BUILD_MANIFEST,
    ENGINES_DENSE_DIR,
    ENGINES_DIR,
    ONNX_DENSE_DIR,
    ONNX_DIR,
    ONNX_FILES,
    ONNX_INT8_DIR,
    ORT_TRT_CACHE_DIR,
    PRUNED_DIR,
    TOWER_NAMES,
)
from mfdeploy.artifacts.manifest import BuildManifest
from mfdeploy.errors import UserError
from mfdeploy.runtime.base import BackendUnavailable, Runner

VARIANTS = ("pruned", "dense", "int8")
TOWERS = TOWER_NAMES


class BuildDir:
    """A `mfdeploy build` output directory: manifest, pruned checkpoint, ONNX towers, engines.

    It only reads what the build wrote: loaded models are cached on the object,
    so several backends share them. A build without `onnx_dense/` has no dense
    ONNX towers; the ONNX Runtime backends then say which command makes them.
    """

    def __init__(self, path: str | Path, require_onnx: bool = True):
        """Open and check a build directory.

        Args:
            path: the directory `mfdeploy build --out` wrote.
            require_onnx: fail unless `onnx/` holds the exported towers.

        Raises:
            UserError: not a directory, no or unreadable `build.json`, no `onnx/`.
        """
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise UserError(f"{self.path}: not a directory (expected a build directory from `mfdeploy build --out`)")
        self.build = BuildManifest.read(self.path)
        if require_onnx and not any((self.path / ONNX_DIR / f).is_file() for f in ONNX_FILES.values()):
            missing = " or ".join(f"{ONNX_DIR}/{name}" for name in ONNX_FILES.values())
            raise UserError(f"{self.path}: no {missing} (an incomplete build: "
                            "rerun `mfdeploy build`)")
        self._adapters: dict[str, Any] = {}

    @property
    def manifest(self) -> dict[str, Any]:
        """build.json as a dict (`self.build` is the typed view)."""
        return self.build.data

    @manifest.setter
    def manifest(self, data: dict[str, Any]) -> None:
        self.build = BuildManifest.from_json(data)

    def __enter__(self) -> BuildDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model(self) -> str | None:
        """The dense model the build started from (hub id or path), as recorded in build.json."""
        return self.build.model

    def adapter(self, variant: str = "pruned"):
        """The pruned checkpoint (`pruned/`) or the dense model, loaded once.

        Raises:
            UserError: the pruned checkpoint is missing or broken.
            BackendUnavailable: the dense model cannot be loaded (variant "dense").
        """
        if variant not in self._adapters:
            from mfdeploy.models import load

            if variant == "pruned":
                if not (self.path / PRUNED_DIR / "config.json").is_file():
                    raise UserError(f"{self.path}: no {PRUNED_DIR}/ checkpoint (an incomplete build: rerun "
                                    "`mfdeploy build`)")
                self._adapters[variant] = load(self.path / PRUNED_DIR)
            else:
                source = self._dense_source()
                try:
                    self._adapters[variant] = load(source)
                except UserError as e:
                    raise BackendUnavailable(f"cannot load the dense model: {e}") from None
        return self._adapters[variant]

    def _dense_source(self) -> str:
        model = self.model
        if model is None:
            raise BackendUnavailable(f"{BUILD_MANIFEST} names no dense model ('model' key)")
        # a relative path recorded at build time may be relative to the build directory
        if not Path(model).expanduser().exists() and (self.path / model).exists():
            return str(self.path / model)
        return model

    def onnx_dir(self, variant: str = "pruned") -> Path:
        """`onnx/`, `onnx_int8/`, or for the dense model `onnx_dense/`.

        Raises:
            BackendUnavailable: the build lacks the folder; the message gives the command that makes it.
        """
        if variant == "pruned":
            return self.path / ONNX_DIR
        if variant == "int8":
            if not (self.path / ONNX_INT8_DIR).is_dir():
                raise BackendUnavailable(f"no {ONNX_INT8_DIR}/ in {self.path}: build it with `mfdeploy build --int8`")
            return self.path / ONNX_INT8_DIR
        dense = self.path / ONNX_DENSE_DIR
        if not all((dense / f).is_file() for f in ONNX_FILES.values()):
            model = self.model or "MODEL"
            raise BackendUnavailable(f"no {ONNX_DENSE_DIR}/ in the build (made by an older mfdeploy): export the "
                                     f"dense towers with `mfdeploy export {model} --out {dense}`")
        return dense

    def tensorrt_flags(self) -> tuple[bool, bool]:
        """(fp16, sparse) the build's engines were made with, for the TensorRT EP to match (see `BuildManifest`)."""
        return self.build.tensorrt_flags()

    def engines_dir(self, variant: str = "pruned") -> Path:
        """`engines/` (pruned) or `engines_dense/` (dense)."""
        return self.path / (ENGINES_DIR if variant == "pruned" else ENGINES_DENSE_DIR)

    def close(self) -> None:
        """Drop loaded models."""
        self._adapters.clear()


def _no_int8(variant: str) -> None:
    if variant == "int8":
        raise BackendUnavailable("the int8 towers are ONNX graphs: time them with the ONNX Runtime backends")


def _torch(build: BuildDir, variant: str, opts: dict) -> Runner:
    from mfdeploy.runtime.torch_runner import TorchRunner

    _no_int8(variant)

    return TorchRunner(build.adapter(variant), threads=opts.get("threads"))


def _torch_cuda(sparse: bool) -> Callable[[BuildDir, str, dict], Runner]:
    def make(build: BuildDir, variant: str, opts: dict) -> Runner:
        from mfdeploy.runtime.torch_cuda import TorchCudaRunner, cuda_unavailable

        _no_int8(variant)
        reason = cuda_unavailable()
        if reason is not None:  # said before any model is loaded
            raise BackendUnavailable(reason)
        return TorchCudaRunner(build.adapter(variant), sparse=sparse)

    return make


def _ort(provider: str) -> Callable[[BuildDir, str, dict], Runner]:
    def make(build: BuildDir, variant: str, opts: dict) -> Runner:
        from mfdeploy.runtime.ort_runner import OrtRunner, check_provider

        check_provider(provider)  # a provider that cannot run here says so before any file is read
        fp16, sparse = opts.get("fp16"), opts.get("sparse")
        if fp16 is None or sparse is None:
            default_fp16, default_sparse = build.tensorrt_flags()
            fp16 = default_fp16 if fp16 is None else fp16
            sparse = default_sparse if sparse is None else sparse
        return OrtRunner(
            build.onnx_dir(variant),
            provider=provider,
            threads=opts.get("threads"),
            cache_dir=build.path / ORT_TRT_CACHE_DIR / variant if provider == "tensorrt" else None,
            fp16=fp16,
            sparse=sparse,
            towers=opts.get("towers", TOWERS),
            max_batch=opts.get("max_batch"),
            max_text_len=opts.get("max_text_len"),
            spin=opts.get("spin", True),
        )

    return make


def _trt(build: BuildDir, variant: str, opts: dict) -> Runner:
    from mfdeploy.runtime.trt_runner import TrtRunner, engine_command

    _no_int8(variant)  # `build --int8` on a GPU builds engines/ from onnx_qdq/: the pruned variant is int8

    return TrtRunner(build.engines_dir(variant), towers=opts.get("towers", TOWERS), how=engine_command(build, variant))


BACKENDS: dict[str, Callable[[BuildDir, str, dict], Runner]] = {
    "torch": _torch,
    "torch-cuda": _torch_cuda(sparse=False),
    "torch-cuda-sparse": _torch_cuda(sparse=True),
    "ort-cpu": _ort("cpu"),
    "ort-cuda": _ort("cuda"),
    "ort-trt": _ort("tensorrt"),
    "trt": _trt,
}


def check_backends(names: Sequence[str]) -> list[str]:
    """Validate backend names, keeping order and dropping repeats.

    Raises:
        UserError: an unknown name, with the list of known ones.
    """
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend {', '.join(map(repr, unknown))}; known backends: {', '.join(BACKENDS)}")
    if not names:
        raise UserError(f"no backend given; known backends: {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def make_runner(
    backend: str,
    build_dir: str | Path | BuildDir,
    *,
    variant: str = "pruned",
    threads: int | None = None,
    fp16: bool | None = None,
    sparse: bool | None = None,
    towers: Sequence[str] = TOWERS,
    max_batch: int | None = None,
    max_text_len: int | None = None,
    spin: bool = True,
) -> Runner:
    """A runner for one backend over one variant of a build.

    Args:
        backend: one of `BACKENDS` (torch, ort-cpu, ort-cuda, ort-trt, trt).
        build_dir: a build directory, or an open `BuildDir` (shares loaded models).
        variant: "pruned" (the build's artifacts), "dense" (the model it started from) or "int8"
            (the build's `onnx_int8/`, ONNX Runtime backends only).
        threads: CPU intra-op threads (default: the physical cores).
        fp16: TensorRT EP FP16 kernels (default: as the build's engines, `BuildDir.tensorrt_flags`).
        sparse: TensorRT EP 2:4 sparse kernels (default: as the build's engines).
        towers: towers to load.
        max_batch: TensorRT EP optimisation profile bound.
        max_text_len: TensorRT EP optimisation profile bound.
        spin: ONNX Runtime thread spinning (off when sessions take turns).

    Raises:
        BackendUnavailable: the backend cannot run here; the message says why.
        UserError: unknown backend or variant, or a broken build directory.
    """
    check_backends([backend])
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    build = build_dir if isinstance(build_dir, BuildDir) else BuildDir(build_dir, require_onnx=False)
    opts = dict(threads=threads, fp16=fp16, sparse=sparse, towers=tuple(towers), max_batch=max_batch,
                max_text_len=max_text_len, spin=spin)
    return BACKENDS[backend](build, variant, opts)


def probe_backends(build_dir: str | Path | BuildDir, backends: Sequence[str] | None = None) -> dict[str, str | None]:
    """Which backends can run on this machine for this build: name -> None, or the reason it cannot.

    Builds each backend's runner over the pruned artifacts once and closes it.
    """
    build = build_dir if isinstance(build_dir, BuildDir) else BuildDir(build_dir, require_onnx=False)
    out: dict[str, str | None] = {}
    for name in check_backends(list(backends or BACKENDS)):
        try:
            make_runner(name, build).close()
            out[name] = None
        except BackendUnavailable as e:
            out[name] = str(e)
    return out

