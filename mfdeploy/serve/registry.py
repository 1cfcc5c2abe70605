"""Backends by name, and the build directory they read their artifacts from.

    torch     PyTorch eager (CPU), from `pruned/` (dense: `build.json["model"]`)
    ort-cpu   ONNX Runtime, CPU EP, from `onnx/` (dense: `onnx_dense/`, else a fresh export)
    ort-cuda  ONNX Runtime, CUDA EP, same files
    ort-trt   ONNX Runtime, TensorRT EP, same files; engine/timing caches in `ort_trt_cache/`
    trt       TensorRT engines `engines/*.plan` (dense: `engines_dense/`), via polygraphy

The "int8" variant is a build's `onnx_int8/` (`build --int8`), for the ONNX Runtime backends.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mfdeploy.errors import MfdeployError, UserError
from mfdeploy.serve.base import BackendUnavailable, Runner

VARIANTS = ("pruned", "dense", "int8")
TOWERS = ("vision", "text")


class BuildDir:
    """A `mfdeploy build` output directory: manifest, pruned checkpoint, ONNX towers, engines.

    Loaded models and the dense model's on-the-fly ONNX export are cached on
    the object, so several backends share them; `close()` removes the export.
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
        manifest = self.path / "build.json"
        if not manifest.is_file():
            raise UserError(f"{self.path}: not a build directory (no build.json; create one with `mfdeploy build`)")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{manifest}: unreadable ({e})") from None
        if not isinstance(self.manifest, dict):
            raise UserError(f"{manifest}: not a build manifest (expected a JSON object)")
        if require_onnx and not any((self.path / "onnx" / f).is_file() for f in ("vision.onnx", "text.onnx")):
            raise UserError(f"{self.path}: no onnx/vision.onnx or onnx/text.onnx (an incomplete build: rerun "
                            "`mfdeploy build`)")
        self._adapters: dict[str, Any] = {}
        self._dense_export: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> BuildDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model(self) -> str | None:
        """The dense model the build started from (hub id or path), as recorded in build.json."""
        model = self.manifest.get("model")
        return str(model) if model else None

    def adapter(self, variant: str = "pruned"):
        """The pruned checkpoint (`pruned/`) or the dense model, loaded once.

        Raises:
            UserError: the pruned checkpoint is missing or broken.
            BackendUnavailable: the dense model cannot be loaded (variant "dense").
        """
        if variant not in self._adapters:
            from mfdeploy.models import load

            if variant == "pruned":
                if not (self.path / "pruned" / "config.json").is_file():
                    raise UserError(f"{self.path}: no pruned/ checkpoint (an incomplete build: rerun `mfdeploy build`)")
                self._adapters[variant] = load(self.path / "pruned")
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
            raise BackendUnavailable("build.json names no dense model ('model' key)")
        # a relative path recorded at build time may be relative to the build directory
        if not Path(model).expanduser().exists() and (self.path / model).exists():
            return str(self.path / model)
        return model

    def onnx_dir(self, variant: str = "pruned") -> Path:
        """`onnx/`, `onnx_int8/`, or for the dense model `onnx_dense/` when present, else a temporary export."""
        if variant == "pruned":
            return self.path / "onnx"
        if variant == "int8":
            if not (self.path / "onnx_int8").is_dir():
                raise BackendUnavailable(f"no onnx_int8/ in {self.path}: build it with `mfdeploy build --int8`")
            return self.path / "onnx_int8"
        if (self.path / "onnx_dense").is_dir():
            return self.path / "onnx_dense"
        if self._dense_export is None:
            try:
                from mfdeploy.export import export_towers
            except ImportError as e:
                raise BackendUnavailable(f"no onnx_dense/ in the build and no exporter to make one ({e})") from None
            adapter = self.adapter("dense")
            tmp = tempfile.TemporaryDirectory(prefix="mfdeploy-dense-onnx-")
            try:
                export_towers(adapter, Path(tmp.name))
            except MfdeployError as e:
                tmp.cleanup()
                raise BackendUnavailable(f"no onnx_dense/ in the build, and exporting the dense model failed: {e}"
                                         ) from None
            self._tmp, self._dense_export = tmp, Path(tmp.name)
        return self._dense_export

    def tensorrt_flags(self) -> tuple[bool, bool]:
        """(fp16, sparse) the build's engines were made with, for the TensorRT EP to match.

        From build.json's `engine` record (`fp16`, per-tower `sparse_weights`);
        without one, sparse when the pruning pattern is 2:4 (which also needs FP16).
        """
        engine = self.manifest.get("engine") or {}
        two_four = self.manifest.get("pattern") == "2:4"
        fp16 = bool(engine.get("fp16", two_four))
        sparse_weights = engine.get("sparse_weights")
        if isinstance(sparse_weights, dict):
            sparse = any(sparse_weights.values())
        else:
            sparse = bool(sparse_weights) if sparse_weights is not None else two_four
        return fp16, sparse

    def engines_dir(self, variant: str = "pruned") -> Path:
        """`engines/` (pruned) or `engines_dense/` (dense)."""
        return self.path / ("engines" if variant == "pruned" else "engines_dense")

    def close(self) -> None:
        """Drop loaded models and remove the temporary dense export."""
        self._adapters.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._dense_export = None


def _no_int8(variant: str) -> None:
    if variant == "int8":
        raise BackendUnavailable("the int8 towers are ONNX graphs: time them with the ONNX Runtime backends")


def _torch(build: BuildDir, variant: str, opts: dict) -> Runner:
    from mfdeploy.serve.torch_runner import TorchRunner

    _no_int8(variant)

    return TorchRunner(build.adapter(variant), threads=opts.get("threads"))


def _ort(provider: str) -> Callable[[BuildDir, str, dict], Runner]:
    def make(build: BuildDir, variant: str, opts: dict) -> Runner:
        from mfdeploy.serve.ort_runner import OrtRunner, check_provider

        check_provider(provider)  # before a possibly costly dense export
        fp16, sparse = opts.get("fp16"), opts.get("sparse")
        if fp16 is None or sparse is None:
            default_fp16, default_sparse = build.tensorrt_flags()
            fp16 = default_fp16 if fp16 is None else fp16
            sparse = default_sparse if sparse is None else sparse
        return OrtRunner(
            build.onnx_dir(variant),
            provider=provider,
            threads=opts.get("threads"),
            cache_dir=build.path / "ort_trt_cache" / variant if provider == "tensorrt" else None,
            fp16=fp16,
            sparse=sparse,
            towers=opts.get("towers", TOWERS),
            max_batch=opts.get("max_batch"),
            max_text_len=opts.get("max_text_len"),
            spin=opts.get("spin", True),
        )

    return make


def _trt(build: BuildDir, variant: str, opts: dict) -> Runner:
    from mfdeploy.serve.trt_runner import TrtRunner

    _no_int8(variant)  # `build --int8` on a GPU builds engines/ from onnx_qdq/: the pruned variant is int8

    return TrtRunner(build.engines_dir(variant), towers=opts.get("towers", TOWERS), how=engine_command(build, variant))


def engine_command(build: BuildDir, variant: str) -> str:
    """The `mfdeploy engine` command that makes a build's engines (`engines/` or `engines_dense/`) on this machine.

    With the precision and the profile bounds the build recorded (its engine
    stage computes them even where it skips the build).
    """
    fp16, _ = build.tensorrt_flags()
    onnx_dir = build.path / ("onnx" if variant == "pruned" else "onnx_dense")
    profiles = (build.manifest.get("engine") or {}).get("profiles") or {}

    def bound(tower: str, name: str, axis: int) -> int | None:
        shape = ((profiles.get(tower) or {}).get(name) or {}).get("max") or []
        return shape[axis] if len(shape) > axis else None

    cmd = f"mfdeploy engine {onnx_dir} --out {build.engines_dir(variant)}" + (" --fp16" if fp16 else "")
    for flag, value in (("--max-batch", bound("vision", "pixel_values", 0)),
                        ("--max-text-len", bound("text", "input_ids", 1))):
        cmd += f" {flag} {value}" if value else ""
    return cmd + (" --sparse off" if variant == "dense" else "")


BACKENDS: dict[str, Callable[[BuildDir, str, dict], Runner]] = {
    "torch": _torch,
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

