"""A `mfdeploy build` output directory as the runners read it: manifest, checkpoints, ONNX towers, engines."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import (
    BUILD_MANIFEST,
    ENGINES_DENSE_DIR,
    ENGINES_DIR,
    INCOMPLETE_BUILD,
    ONNX_DENSE_DIR,
    ONNX_DIR,
    ONNX_FILES,
    ONNX_INT8_DIR,
    PRUNED_DIR,
    is_build,
    missing_onnx,
)
from mfdeploy.artifacts.manifest import BuildManifest
from mfdeploy.artifacts.tempdirs import moved_aside
from mfdeploy.errors import UserError
from mfdeploy.runtime.base import BackendUnavailable


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
            raise UserError(moved_aside(self.path) or f"{self.path}: not a directory (expected a build directory "
                            "from `mfdeploy build --out`)")
        self.build = BuildManifest.read(self.path)
        lacking = missing_onnx(self.path)
        if require_onnx and lacking:  # every build exports both towers: one gone is a damaged build
            raise UserError(f"{self.path}: no {' or '.join(lacking)} {INCOMPLETE_BUILD}")
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
                    raise UserError(f"{self.path}: no {PRUNED_DIR}/ checkpoint {INCOMPLETE_BUILD}")
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
                raise BackendUnavailable(f"no {ONNX_INT8_DIR}/ in {self.path}: build it with `mfdeploy build --int8`, "
                                         f"or add it with `mfdeploy quantize {self.path} --in-place`")
            return self.path / ONNX_INT8_DIR
        dense = self.path / ONNX_DENSE_DIR
        if not all((dense / f).is_file() for f in ONNX_FILES.values()):
            command = shlex.join(["mfdeploy", "export", self.model or "MODEL", "--out", str(dense)])
            raise BackendUnavailable(f"no {ONNX_DENSE_DIR}/ in the build (made by an older mfdeploy): export the "
                                     f"dense towers with `{command}`")
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


def missing_tower(path: Path) -> UserError:
    """The error for a tower file that is not there: an incomplete build when its folder is a build's, else an
    export to make (`mfdeploy export`)."""
    if is_build(path.parent.parent):
        return UserError(f"{path}: missing {INCOMPLETE_BUILD}")
    return UserError(f"{path}: missing (export the towers with `mfdeploy export`)")


__all__ = ["BuildDir", "missing_tower"]
