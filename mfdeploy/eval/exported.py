"""Evaluating an export directory through its own towers: a plain one (`mfdeploy export`, fp32) or a quantized
one (`mfdeploy quantize EXPORT --out DIR`: INT8, or TensorRT's QDQ towers), prepared by the checkpoint its
export.json names.

Which backends can run such a directory is decided here, before anything slow, and its files are checked
against export.json's hashes. A quantized directory's towers are not gated again at evaluation: the gate
they passed is the one `mfdeploy quantize` ran against the fp32 export and recorded in quantize.json
(bound to these files by export.json's hashes), and the result's "gate" is that record, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import EXPORT_MANIFEST, PRUNED_DIR, QUANTIZE_MANIFEST, is_build
from mfdeploy.artifacts.manifest import ExportManifest, QuantizeManifest, plain_export, quantized_export
from mfdeploy.artifacts.routes import no_export_manifest
from mfdeploy.errors import UserError

QUANTIZED_BACKEND = "onnx-int8"  # ONNX Runtime on the CPU: its INT8 operators; TensorRT's QDQ towers (--target trt)
# run there too, as `serve --backend ort-cpu` runs them: INT8 QDQ as int8+f32, fp8 dequantized to f32 matmuls


@dataclass(frozen=True)
class ExportSource:
    """An export directory given to `mfdeploy eval`: its export.json, and quantize.json when quantized."""

    path: Path
    manifest: ExportManifest
    quantized: QuantizeManifest | None = None

    @property
    def model_source(self) -> str:
        """The checkpoint whose tokenizer and image processor prepare the towers' inputs."""
        return str(self.manifest.model_source)

    def check(self, backend: str) -> None:
        """Refuse, in one line, a backend that cannot run these towers; then verify them against export.json.

        Raises:
            UserError: the backend cannot run them, or a file differs from export.json's record.
        """
        if self.quantized is None:
            if backend in ("torch", "onnx-int8", "openvino-int8"):  # towers only, fp32
                raise UserError(f"--backend {backend}: {self.path} is an export directory of fp32 ONNX towers (no "
                                "weights to run with torch, no INT8 towers): evaluate it with --backend onnx or "
                                "openvino")
        elif backend != QUANTIZED_BACKEND:
            raise UserError(f"--backend {backend}: {self.path} is a quantized export directory "
                            f"({self.quantized.mode or 'int8'} ONNX towers, {QUANTIZE_MANIFEST}; no weights, no fp32 "
                            f"towers) that ONNX Runtime runs: evaluate it with --backend {QUANTIZED_BACKEND}")
        from mfdeploy.models.integrity import verify_artifacts

        verify_artifacts(self.path, ("",), manifests=(EXPORT_MANIFEST,))  # a changed tower is named here

    def recorded_gate(self, precision: str) -> dict[str, Any] | None:
        """A quantized directory's gate, as quantize.json records it (None for a plain export).

        Raises:
            UserError: quantize.json records no passing check of both towers.
        """
        if self.quantized is None:
            return None
        parity = self.quantized.data.get("parity")
        towers = ("vision", "text")
        if not isinstance(parity, dict) or not parity.get("passed") \
                or not all(isinstance(parity.get(t), dict) and "min_cosine" in parity[t] for t in towers):
            raise UserError(f"{self.path / QUANTIZE_MANIFEST}: records no passing check against the fp32 towers "
                            "('parity'); re-quantize the export with `mfdeploy quantize EXPORT --out DIR`")
        source = self.quantized.data.get("source") or "the fp32 export"
        record: dict[str, Any] = {
            "precision": precision, "min_cosine_required": parity.get("min_cosine_required"),
            "reference": f"the fp32 towers of {source} ({parity.get('provider', 'onnxruntime')})",
            "recorded": f"{QUANTIZE_MANIFEST}: checked by mfdeploy quantize, not re-run (these towers match "
                        f"{EXPORT_MANIFEST}'s hashes)"}
        for tower in towers:
            record[tower] = {k: parity[tower][k] for k in ("min_cosine", "passed", "runs") if k in parity[tower]}
        record["passed"] = True
        return record


def export_source(source: object) -> ExportSource | None:
    """`source` as an export directory (plain or quantized), None for anything else (checkpoint, build, Adapter).

    Raises:
        UserError: its export.json is unreadable or names no model, or it holds a build's quantized towers
            (`mfdeploy quantize BUILD --out DIR`), which no export.json names, or it is a folder of a build (`onnx/`,
            `onnx_int8/`): the message gives the route that runs.
    """
    if not isinstance(source, (str, Path)):
        return None
    path = Path(source).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        if is_build(path.parent) and not (path / PRUNED_DIR / "config.json").is_file():
            # onnx/, onnx_int8/, ... (not a prune or build written inside one): the build names the model
            raise UserError(f"{path} is a folder of the build {path.parent}: evaluate the build (`mfdeploy eval "
                            f"{path.parent}`, with --backend onnx-int8 for its INT8 towers)")
        if (path / QUANTIZE_MANIFEST).is_file() and not (path / EXPORT_MANIFEST).is_file():
            raise UserError(no_export_manifest(path, "eval"))  # `quantize BUILD --out DIR`: nothing names the model
    found = quantized_export(path)
    if found is not None:
        return ExportSource(path, *found)
    manifest = plain_export(path)
    return ExportSource(path, manifest) if manifest is not None else None


__all__ = ["QUANTIZED_BACKEND", "ExportSource", "export_source"]
