"""What `mfdeploy serve` serves: one model of a build (pruned, dense, its INT8 towers) or a plain export directory.

A build directory holds several models; `--variant` picks one and
`--backend` says how it runs:

    backend          --variant pruned (default)   --variant dense
    ort-cpu/ort-cuda onnx/                        onnx_dense/
    ort-int8         onnx_int8/                   refused: a build quantizes the pruned towers only
    openvino         onnx/                        onnx_dense/
    openvino-int8    onnx_int8/                   refused, as ort-int8
    trt              engines/                     engines_dense/
    torch*           pruned/                      the model build.json names

An export directory (`mfdeploy export --out DIR`: vision.onnx, text.onnx,
export.json; or `mfdeploy quantize EXPORT --out DIR`, its quantized towers)
holds one model, served with ONNX Runtime (`ort-cpu`, `ort-cuda`) or, once
`mfdeploy engine DIR` built its plans, `trt`; `--variant`, if given, must name
the model it holds (export.json's `pruned`, or the towers' metadata).

Texts and images are preprocessed with the tokenizer and image processor of
the checkpoint the towers came from: a build's `pruned/` (pruning copies
them unchanged from the dense model, so they serve the dense variant too),
or the checkpoint an export directory's `export.json` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import (
    EXPORT_MANIFEST,
    META_PREFIX,
    ONNX_FILES,
    PRUNED_DIR,
    QUANTIZE_MANIFEST,
    has_towers,
    is_build,
)
from mfdeploy.artifacts.manifest import ExportManifest, QuantizeManifest, naming_export
from mfdeploy.artifacts.routes import no_export_manifest
from mfdeploy.artifacts.tempdirs import moved_aside
from mfdeploy.errors import UserError
from mfdeploy.models.integrity import verify_artifacts
from mfdeploy.runtime.base import BackendUnavailable
from mfdeploy.server.config import BACKENDS, ServeConfig

EXPORT_BACKENDS = ("ort-cpu", "ort-cuda", "trt")  # an export directory holds ONNX towers (and maybe plans)


@dataclass(frozen=True)
class Served:
    """The model to serve, resolved and checked before the socket opens.

    Attributes:
        path: the build or export directory.
        kind: "build" or "export".
        variant: "pruned" or "dense" (a build), "export" (an export directory).
        checkpoint: whose tokenizer, image processor and logit scale preprocess the requests.
        label: how responses and `/health` name the model.
    """

    path: Path
    kind: str
    variant: str
    checkpoint: Path | str
    label: str


def resolve(cfg: ServeConfig) -> Served:
    """Check that `cfg.build_dir` is a build or an export directory `cfg.backend` and `cfg.variant` can serve.

    Raises:
        UserError: not such a directory, or a backend or variant it cannot serve (one line naming the fix).
    """
    path = Path(cfg.build_dir).expanduser()
    if is_build(path):
        return _runnable(_build(path, cfg), cfg)
    if path.is_dir() and has_towers(path):
        return _runnable(_export(path, cfg), cfg)
    if path.is_dir() and is_build(path.parent):
        _inside_build(path)
    raise UserError(moved_aside(path) or f"{path}: not a build directory (`mfdeploy build --out`, with build.json) "
                    "nor an export directory (`mfdeploy export --out`, with vision.onnx, text.onnx and export.json)")


def _runnable(served: Served, cfg: ServeConfig) -> Served:
    """`served`, once the backend's packages and device are known to be here (else one line, before the socket
    opens: it used to come after the listen line, a shutdown line and the same error logged once more)."""
    from mfdeploy.runtime.registry import unavailable_here

    why = unavailable_here(BACKENDS[cfg.backend][0])
    if why is not None:
        raise UserError(f"cannot serve {served.path} with {cfg.backend}: {why}")
    return served


def _build(path: Path, cfg: ServeConfig) -> Served:
    from mfdeploy.runtime import BuildDir

    build = BuildDir(path)  # a broken build fails here, in one line
    variant = cfg.variant or "pruned"
    if variant == "dense" and BACKENDS[cfg.backend][1] == "int8":
        raise UserError(f"--backend {cfg.backend} --variant dense: a build's INT8 towers (onnx_int8/) are the pruned "
                        f"model's; serve the dense model with --backend {BACKENDS[cfg.backend][0]}")
    runtime_backend, precision = BACKENDS[cfg.backend]
    read = [f"{PRUNED_DIR}/"]  # the tokenizer and image processor (and the torch backends' weights)
    # the backends that read ONNX folders: a missing one is named before the socket opens, with its command
    if runtime_backend in ("ort-cpu", "ort-cuda", "openvino"):
        try:
            read.append(build.onnx_dir(precision if precision == "int8" else variant).name + "/")
        except BackendUnavailable as e:
            raise UserError(f"cannot serve {path} with {cfg.backend}: {e}") from None
    verify_artifacts(path, read)  # a file changed since the build is named here, not deep inside a loader
    what = "dense" if variant == "dense" else f"{build.manifest.get('method')} {build.manifest.get('ratio')}"
    return Served(path, "build", variant, path / PRUNED_DIR, f"{build.model or 'model'} ({what}, {cfg.backend})")


def _export(path: Path, cfg: ServeConfig) -> Served:
    if is_build(path.parent):
        _inside_build(path)
    if not (path / EXPORT_MANIFEST).is_file():  # before the backend: no backend serves such a folder
        raise UserError(no_export_manifest(path, "serve"))
    if cfg.backend not in EXPORT_BACKENDS:
        raise UserError(_export_backends(path, cfg.backend))
    manifest = naming_export(path)
    pruned = _pruning(path, manifest)
    if cfg.variant is not None:
        _check_variant(path, cfg.variant, pruned)
    quantized = manifest.data.get("quantized")  # `mfdeploy quantize EXPORT --out DIR` made it
    what = ("quantized export" if isinstance(quantized, dict) else "export") + (
        f" of {_how_pruned(pruned)}" if isinstance(pruned, dict) else "")
    return Served(path, "export", "export", _checkpoint(str(manifest.model_source), path),
                  f"{manifest.model_id or path.name} ({what}, {cfg.backend})")


def _pruning(path: Path, manifest: ExportManifest) -> dict[str, Any] | bool | None:
    """What the model of an export is: how it was pruned (origin keys: model_id, method, ratio, pattern), False
    when dense, None when nothing says (towers exported by another tool)."""
    recorded = manifest.data.get("pruned")
    if isinstance(recorded, dict) or recorded is False:
        return recorded
    import onnx  # an export made before export.json said it: the metadata the exporter writes into each tower

    try:
        props = onnx.load(str(path / ONNX_FILES["vision"]), load_external_data=False).metadata_props
    except Exception:  # noqa: BLE001 - not an ONNX file: the runner names it when it loads the towers
        return None
    meta = {p.key.removeprefix(META_PREFIX): p.value for p in props}
    if meta.get("pruned") == "true":
        return {k: meta.get(k) for k in ("model_id", "method", "ratio", "pattern")}
    return False if meta.get("pruned") == "false" else None


def _how_pruned(pruned: dict[str, Any]) -> str:
    """`magnitude 0.5 unstructured`, as `Adapter.pruned_label` says it."""
    ratio = pruned.get("ratio")
    try:
        ratio = f"{float(str(ratio)):g}"  # the towers' metadata holds it as text
    except ValueError:
        pass
    return f"{pruned.get('method')} {ratio} {pruned.get('pattern') or 'unstructured'}"


def _check_variant(path: Path, variant: str, pruned: dict[str, Any] | bool | None) -> None:
    """`--variant` on an export: it holds one model; the variant named must be that one."""
    if pruned is None:
        raise UserError(f"--variant {variant}: {path} is an export whose {EXPORT_MANIFEST} and towers do not say "
                        "whether its model is pruned; serve it without --variant")
    if variant == "pruned" and not pruned:
        raise UserError(f"--variant pruned: {path} is an export of a dense model; serve it without --variant, or "
                        "export the pruned one (`mfdeploy export PRUNE_OR_BUILD_DIR --out DIR`) and serve that")
    if variant == "dense" and isinstance(pruned, dict):
        dense = pruned.get("model_id") or "MODEL"
        raise UserError(f"--variant dense: {path} is an export of a pruned model ({_how_pruned(pruned)} from "
                        f"{dense}); serve it without --variant, or export the dense one (`mfdeploy export {dense} "
                        "--out DIR`) and serve that")


def _export_backends(path: Path, backend: str) -> str:
    """What to say to `--backend BACKEND` on an export directory, which ort-cpu, ort-cuda and trt serve: the quantized
    towers of `mfdeploy quantize EXPORT --out DIR` are served as they are (the INT8 backends read a build's
    onnx_int8/), and TensorRT builds engines only from QDQ towers (`--target trt`), not ONNX Runtime's INT8 ones."""
    target = QuantizeManifest.read(path).target if (path / QUANTIZE_MANIFEST).is_file() else None
    if target is not None and BACKENDS[backend][1] == "int8":
        return (f"--backend {backend}: {path} holds quantized towers already (`mfdeploy quantize --out`), served as "
                f"they are: use --backend ort-cpu ({backend} serves a build's onnx_int8/)")
    ways = ["ort-cpu", "ort-cuda"] + ([] if target == "ort" else [f"trt (after `mfdeploy engine {path}"
                                                                    f"{' --int8' if target else ''}`)"])
    hint = (f" ({backend} serves a build's onnx_int8/; INT8 towers of this export: `mfdeploy quantize {path} --out "
            "DIR`, then serve DIR with ort-cpu)"
            if target is None and BACKENDS[backend][1] == "int8" else "")
    what = "quantized " if target is not None else ""
    return (f"--backend {backend}: {path} is an export directory of {what}ONNX towers; serve it with "
            f"{', '.join(ways[:-1])} or {ways[-1]}{hint}")


def _inside_build(path: Path) -> None:
    raise UserError(f"{path} is a folder of the build {path.parent}: serve {path.parent} (and choose the model "
                    "with --variant pruned|dense)")


def _checkpoint(source: str, path: Path) -> Path | str:
    """The local checkpoint an export directory came from (a local path, a bundled model, or a hub id's cached
    snapshot)."""
    from mfdeploy.models.loader import recorded_checkpoint

    where = recorded_checkpoint(source, path / EXPORT_MANIFEST)
    if isinstance(where, Path):
        return where
    from huggingface_hub import snapshot_download

    try:  # the export loaded it, so it is in the cache: its logit scale is read from its weights' file
        return Path(snapshot_download(source, local_files_only=True,
                                      allow_patterns=["*.json", "*.txt", "*.safetensors"]))
    except Exception as e:  # noqa: BLE001 - LocalEntryNotFoundError and kin: one line, with the fix
        raise UserError(f"{path / EXPORT_MANIFEST}: the model it was exported from, {source}, is not in the "
                        f"Hugging Face cache here ({type(e).__name__}): download it with "
                        f"`huggingface-cli download {source}`") from None


def make_runner(served: Served, backend: str, **opts: Any) -> Any:
    """The runner over `served` (blocking: loads sessions or engines).

    Args:
        served: from `resolve`.
        backend: the serve backend (`BACKENDS`).
        opts: threads, max_batch, max_text_len, spin (as `mfdeploy.runtime.make_runner` takes them).

    Raises:
        BackendUnavailable: the backend cannot run here, or the build lacks the variant's files (with the command
            that makes them).
    """
    if served.kind == "build":
        from mfdeploy.runtime import make_runner as runtime_runner

        runtime_backend, precision = BACKENDS[backend]
        return runtime_runner(runtime_backend, served.path, variant=precision if precision == "int8"
                              else served.variant, **opts)
    if backend == "trt":
        from mfdeploy.runtime import TrtRunner

        return TrtRunner(served.path, how=f"mfdeploy engine {served.path}")
    from mfdeploy.runtime.ort_runner import OrtRunner, check_provider
    from mfdeploy.runtime.registry import ORT_BACKENDS

    provider = ORT_BACKENDS[backend]
    check_provider(provider)
    return OrtRunner(served.path, provider=provider, **opts)


__all__ = ["EXPORT_BACKENDS", "Served", "make_runner", "resolve"]
