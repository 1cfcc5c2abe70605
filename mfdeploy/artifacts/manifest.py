"""Typed views of the manifests mfdeploy writes: what readers need from build.json, prune.json, export.json,
quantize.json and engine.json, read in one place instead of guessed at with `.get(key, default)` everywhere.

The writers keep writing plain dicts (the JSON keys are the interface); each dataclass here reads the
keys its readers use, says in one place what a missing key means (older manifests lack some), and
keeps the whole JSON object in `data` for anything else. `to_json()` gives the object back, with the
typed fields written over it, so `Manifest.from_json(m.to_json()) == m`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import (
    BUILD_MANIFEST,
    ENGINE_RECORD,
    EXPORT_MANIFEST,
    PRUNE_MANIFEST,
    QUANTIZE_MANIFEST,
    SOURCE_MANIFESTS,
    TOWER_NAMES,
)
from mfdeploy.errors import UserError


def read_object(path: Path) -> dict[str, Any]:
    """A manifest's JSON object.

    Raises:
        UserError: missing, unreadable, or not a JSON object (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); rerun the command that wrote it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a manifest (expected a JSON object)")
    return data


@dataclass(frozen=True)
class Artifact:
    """One file a manifest records: its sha256 and size."""

    sha256: str
    bytes: int | None = None


def _artifacts(data: dict[str, Any]) -> dict[str, Artifact]:
    arts = data.get("artifacts")
    if not isinstance(arts, dict):
        return {}
    return {k: Artifact(v["sha256"], v.get("bytes")) for k, v in arts.items() if isinstance(v, dict) and "sha256" in v}


@dataclass(frozen=True)
class EngineRecord:
    """engine.json, or build.json's `engine` / `engine_dense`: how TensorRT engines were (or would be) built."""

    status: str  # built | parity_failed | skipped
    fp16: bool
    int8: bool
    sparse_weights: dict[str, bool]  # tower -> TensorRT SPARSE_WEIGHTS flag
    profiles: dict[str, Any]  # tower -> input -> {"min", "opt", "max"} shapes
    reason: str | None = None  # why the engines were skipped
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], pattern: str | None = None) -> EngineRecord:
        """Read a record; `pattern` (the build's) fills what records written before these keys existed lack.

        Such a record's engines were FP16 with sparse weights exactly when the pattern was 2:4.
        """
        two_four = pattern == "2:4"
        sparse = data.get("sparse_weights")
        if isinstance(sparse, dict):
            weights = {k: bool(v) for k, v in sparse.items()}
        else:  # one flag for both towers, or none recorded
            weights = dict.fromkeys(TOWER_NAMES, two_four if sparse is None else bool(sparse))
        return cls(status=str(data.get("status", "skipped")), fp16=bool(data.get("fp16", two_four)),
                   int8=bool(data.get("int8", False)), sparse_weights=weights,
                   profiles=dict(data.get("profiles") or {}), reason=data.get("reason"), data=dict(data))

    @property
    def sparse(self) -> bool:
        """Whether any tower's engine may use 2:4 sparse kernels."""
        return any(self.sparse_weights.values())

    def profile_max(self, tower: str, tensor: str, axis: int) -> int | None:
        """The largest size of `tensor`'s `axis` in `tower`'s profile, None when not recorded."""
        shape = ((self.profiles.get(tower) or {}).get(tensor) or {}).get("max") or []
        return int(shape[axis]) if len(shape) > axis else None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON (the typed fields over the full object read)."""
        out = {**self.data, "status": self.status, "fp16": self.fp16, "int8": self.int8,
               "sparse_weights": dict(self.sparse_weights), "profiles": self.profiles}
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    @classmethod
    def read(cls, directory: Path) -> EngineRecord:
        """`directory/engine.json` (`mfdeploy engine`'s record)."""
        return cls.from_json(read_object(Path(directory) / ENGINE_RECORD))


@dataclass(frozen=True)
class BuildManifest:
    """build.json: what `mfdeploy bench`, the runtime registry and `mfdeploy eval` read from a build."""

    model: str | None  # the dense model the build started from (hub id or path)
    method: str | None
    ratio: float | None
    pattern: str | None  # "unstructured" | "2:4" | "structured"
    seed: int | None
    engine: EngineRecord | None  # the pruned towers' engines (engines/)
    engine_dense: EngineRecord | None  # the dense baseline's (engines_dense/)
    artifacts: dict[str, Artifact]
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildManifest:
        """Read a build.json object (missing keys: None, no engine record, no artifacts)."""
        pattern = data.get("pattern")

        def engine(key: str) -> EngineRecord | None:
            rec = data.get(key)
            return EngineRecord.from_json(rec, pattern) if isinstance(rec, dict) else None

        model = data.get("model")
        return cls(model=str(model) if model else None, method=data.get("method"), ratio=data.get("ratio"),
                   pattern=pattern, seed=data.get("seed"), engine=engine("engine"),
                   engine_dense=engine("engine_dense"), artifacts=_artifacts(data), data=dict(data))

    @classmethod
    def read(cls, directory: Path) -> BuildManifest:
        """`directory/build.json`.

        Raises:
            UserError: no build.json (not a build directory), or an unreadable one.
        """
        path = Path(directory) / BUILD_MANIFEST
        if not path.is_file():
            raise UserError(f"{directory}: not a build directory (no {BUILD_MANIFEST}; create one with "
                            "`mfdeploy build`)")
        return cls.from_json(read_object(path))

    def tensorrt_flags(self) -> tuple[bool, bool]:
        """(fp16, sparse) the build's engines were made with; without an engine record, as a 2:4 build's."""
        engine = self.engine or EngineRecord.from_json({}, self.pattern)
        return engine.fp16, engine.sparse

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON (the typed fields over the full object read)."""
        out = {**self.data, "model": self.model, "method": self.method, "ratio": self.ratio,
               "pattern": self.pattern, "seed": self.seed,
               "engine": self.engine.to_json() if self.engine else None,
               "engine_dense": self.engine_dense.to_json() if self.engine_dense else None}
        if self.artifacts:
            out["artifacts"] = {k: {"sha256": a.sha256, "bytes": a.bytes} for k, a in self.artifacts.items()}
        return out


@dataclass(frozen=True)
class PruneManifest:
    """prune.json: how a model was pruned."""

    model: str | None
    method: str | None
    ratio: float | None
    pattern: str | None
    seed: int | None
    artifacts: dict[str, Artifact]
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, directory: Path) -> PruneManifest:
        """`directory/prune.json`."""
        data = read_object(Path(directory) / PRUNE_MANIFEST)
        model = data.get("model")
        return cls(model=str(model) if model else None, method=data.get("method"), ratio=data.get("ratio"),
                   pattern=data.get("pattern"), seed=data.get("seed"), artifacts=_artifacts(data), data=data)


@dataclass(frozen=True)
class ExportManifest:
    """export.json: which model the towers were exported from, and the model sizes recorded with them."""

    model_id: str | None
    model_source: str | None  # what `mfdeploy.models.load` can load again (processor, tokenizer)
    sizes: dict[str, int]  # image_size, max_text_len, embed_dim, ...
    opset: int | None
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, directory: Path) -> ExportManifest:
        """`directory/export.json`."""
        data = read_object(Path(directory) / EXPORT_MANIFEST)
        model = data.get("model")
        if not isinstance(model, dict):
            model = {}
        return cls(model_id=model.get("id"), model_source=model.get("source"),
                   sizes={k: v for k, v in model.items() if isinstance(v, int) and not isinstance(v, bool)},
                   opset=data.get("opset"), data=data)


@dataclass(frozen=True)
class QuantizeManifest:
    """quantize.json: what a directory of quantized towers holds."""

    model: str | None
    target: str | None  # ort | trt
    mode: str | None  # int8 | fp8
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, directory: Path) -> QuantizeManifest:
        """`directory/quantize.json`."""
        data = read_object(Path(directory) / QUANTIZE_MANIFEST)
        return cls(model=data.get("model"), target=data.get("target"), mode=data.get("mode"), data=data)


def plain_export(directory: Path) -> ExportManifest | None:
    """`directory`'s export.json when it is a plain export (towers and export.json, no weights, not quantized)
    naming the checkpoint its towers came from (`model_source`); else None.

    Raises:
        UserError: export.json is unreadable, or names no model.
    """
    directory = Path(directory).expanduser()
    if not (directory / EXPORT_MANIFEST).is_file() or (directory / "config.json").is_file() \
            or (directory / QUANTIZE_MANIFEST).is_file():
        return None
    return naming_export(directory)


def quantized_export(directory: Path) -> tuple[ExportManifest, QuantizeManifest] | None:
    """`directory`'s export.json and quantize.json when it is a quantized export (`mfdeploy quantize EXPORT
    --out DIR`: towers, export.json and quantize.json, no weights); else None.

    Raises:
        UserError: a manifest is unreadable, or export.json names no model.
    """
    directory = Path(directory).expanduser()
    if not (directory / EXPORT_MANIFEST).is_file() or not (directory / QUANTIZE_MANIFEST).is_file() \
            or (directory / "config.json").is_file():
        return None
    return naming_export(directory), QuantizeManifest.read(directory)


def naming_export(directory: Path) -> ExportManifest:
    """`directory`'s export.json, which must name the model its towers came from (`model_source`).

    Raises:
        UserError: export.json is unreadable, or names no model.
    """
    manifest = ExportManifest.read(directory)
    if not manifest.model_source:
        raise UserError(f"{directory / EXPORT_MANIFEST}: names no model ('model.source'), whose tokenizer and image "
                        "processor prepare the inputs; re-export with `mfdeploy export MODEL --out DIR`")
    return manifest


def source_model(directory: Path) -> str | None:
    """The dense model a prune or build directory was made from (its manifest's `model`), else None.

    Raises:
        UserError: the manifest is unreadable.
    """
    for name in SOURCE_MANIFESTS:
        path = Path(directory) / name
        if path.is_file():
            model = read_object(path).get("model")
            return str(model) if model else None
    return None
