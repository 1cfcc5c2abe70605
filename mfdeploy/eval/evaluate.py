"""Evaluate a model (PyTorch or its ONNX towers) on an evaluation set; compare pruned with dense."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mfdeploy.artifacts.layout import (
    INCOMPLETE,
    ONNX_DIR,
    ONNX_INT8_DIR,
    QUANTIZE_MANIFEST,
    has_towers,
    is_build,
    missing_onnx,
)
from mfdeploy.artifacts.tempdirs import owned_tempdir
from mfdeploy.errors import UserError, is_whole
from mfdeploy.eval.datasets import resolve_data
from mfdeploy.eval.exported import export_source
from mfdeploy.eval.metrics import retention, retrieval_recall, zero_shot_accuracy
from mfdeploy.eval.precision import check_options, onnx_runner, precision_record, torch_runner
from mfdeploy.eval.prepare import Prepared, prepare
from mfdeploy.models.base import Adapter
from mfdeploy.runtime.base import Runner

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
ALIASES = {"ort-cpu": "onnx", "ort-int8": "onnx-int8"}  # serve's, bench's and tune's names for the same runs


def backend_name(backend: str) -> str:
    """`backend` as eval names it (serve's `ort-cpu` is eval's `onnx`), or a one-line refusal."""
    backend = ALIASES.get(backend, backend)
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: unknown backend (expected one of: {', '.join(BACKENDS)}; "
                        f"{', '.join(f'{a} = {b}' for a, b in ALIASES.items())})")
    return backend
Exporter = Callable[[Adapter, Path], object]  # (model, out_dir): writes vision.onnx and text.onnx
BATCH_SIZE = 256


def embed_images(runner: Runner, pixels: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """`[N,3,H,W] -> [N,D]` float32 image embeddings, in batches."""
    return np.concatenate([np.asarray(runner.embed_images(np.ascontiguousarray(pixels[i:i + batch_size])),
                                      dtype=np.float32)
                           for i in range(0, len(pixels), batch_size)])


def embed_texts(runner: Runner, ids: np.ndarray, mask: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """`[N,L], [N,L] -> [N,D]` float32 text embeddings, in batches cut to their longest text."""
    out = []
    for i in range(0, len(ids), batch_size):
        m = mask[i:i + batch_size]
        used = np.flatnonzero(m.any(axis=0))
        length = int(used[-1]) + 1 if used.size else m.shape[1]  # trailing all-padding columns dropped
        out.append(np.asarray(runner.embed_texts(np.ascontiguousarray(ids[i:i + batch_size, :length]),
                                                 np.ascontiguousarray(m[:, :length])), dtype=np.float32))
    return np.concatenate(out)


def evaluate(runner: Runner, prepared: Prepared, batch_size: int = BATCH_SIZE) -> dict:
    """Zero-shot accuracy of every task and retrieval recall@1/5 of a runner on prepared data.

    Image embeddings of the classification images are computed once and
    shared by all tasks.

    Args:
        runner: any backend (`TorchRunner`, `OrtRunner`, ...).
        prepared: model inputs from `mfdeploy.eval.prepare`.
        batch_size: images or texts per forward pass.

    Returns:
        `{"data": description, "counts": {...}, "tasks": {task: accuracy},
        "retrieval": {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}}`; "tasks" is
        empty for pair files and "retrieval" empty for image folders.
    """
    tasks: dict[str, float] = {}
    if prepared.pixels is not None:
        image_embeds = embed_images(runner, prepared.pixels, batch_size)  # [N, D], once for all tasks
        for name, (ids, mask) in prepared.prompts.items():
            class_embeds = embed_texts(runner, ids, mask, batch_size)  # [C, D]
            tasks[name] = zero_shot_accuracy(image_embeds, class_embeds, prepared.labels[name])
    retrieval: dict[str, float] = {}
    if prepared.retrieval_pixels is not None:
        assert prepared.caption_ids is not None and prepared.caption_mask is not None  # prepared with the pixels
        img = embed_images(runner, prepared.retrieval_pixels, batch_size)  # [Ni, D]
        txt = embed_texts(runner, prepared.caption_ids, prepared.caption_mask, batch_size)  # [Nt, D]
        retrieval = retrieval_recall(img @ txt.T, prepared.positives)
    return {"data": prepared.evalset.description, "counts": prepared.evalset.counts(),
            "tasks": tasks, "retrieval": retrieval}


def _onnx_dir(source: str | Path | Adapter | None, backend: str = "onnx") -> Path | None:
    """The exported towers of a build directory (or of a directory holding them), None for a checkpoint."""
    if backend.endswith("-int8"):
        if source is None or isinstance(source, Adapter):  # no directory that could hold onnx_int8/
            what = "the bundled model" if source is None else "a model held in memory"
            raise UserError(f"--backend {backend} runs a build's {ONNX_INT8_DIR}/ (`mfdeploy build --int8`, or "
                            f"`mfdeploy quantize BUILD --in-place`): pass the build directory, not {what}")
        path = Path(source).expanduser()
        for candidate in (path / ONNX_INT8_DIR, path):
            if (candidate / QUANTIZE_MANIFEST).is_file():
                return candidate
        raise UserError(f"--backend {backend}: {source} has no {ONNX_INT8_DIR}/ (build with --int8, or add it with "
                        f"`mfdeploy quantize {source} --in-place`)")
    if source is None or isinstance(source, Adapter):
        return None
    path = Path(source).expanduser()
    for candidate in (path, path / ONNX_DIR):
        if has_towers(candidate):
            return candidate
    if is_build(path):
        raise UserError(f"{path}: no {' or '.join(missing_onnx(path))} ({INCOMPLETE}, or evaluate with "
                        "--backend torch)")
    return None


def _parity_dir(source: str | Path | Adapter | None) -> Path | None:
    """The folder of fp32 ONNX towers (and their parity inputs) the source has, if any."""
    try:
        return _onnx_dir(source, "onnx")
    except UserError:  # a build without onnx/: the gate makes its own inputs
        return None


@contextmanager
def open_runner(source: str | Path | Adapter | None, adapter: Adapter, backend: str = "torch",
                exporter: Exporter | None = None, precision: str | None = None,
                dtype: str | None = None) -> Iterator[Runner]:
    """A runner for a model, closed on exit; below fp32, only once it matches the fp32 towers (`eval.precision`).

    Args:
        source: what the user named (used to find a build directory's `onnx/`).
        adapter: the loaded model.
        backend: "torch" (eager PyTorch, on the device the model is on) or "onnx" (ONNX Runtime on
            the CPU over the build's `onnx/` towers, or over towers exported
            to a temporary directory for a plain checkpoint), or "onnx-int8"
            (a build's `onnx_int8/`); "openvino", "openvino-int8": OpenVINO over the same towers.
        exporter: writes the towers of `adapter` into a directory (`mfdeploy.exporting.export_towers`), for
            "onnx" on a model that has no ONNX towers yet. Evaluation never imports the exporter: the
            caller (the API, the CLI) hands it in; without one such a model is refused in one line.
        precision: OpenVINO's inference precision (auto | f32 | bf16 | f16; None: auto).
        dtype: torch's (float32 | bfloat16; None: float32 on the CPU, as loaded on a GPU).
    """
    backend = backend_name(backend)
    if backend == "torch":
        runner: Runner = torch_runner(adapter, dtype, _parity_dir(source))
        try:
            yield runner
        finally:
            runner.close()
        return
    onnx_dir = _onnx_dir(source, backend)
    with owned_tempdir("mfdeploy-eval-") as tmp:
        if onnx_dir is None:
            if exporter is None:
                raise UserError(f"--backend {backend}: {source or 'the bundled model'} has no ONNX towers; export "
                                "them first (`mfdeploy export MODEL --out DIR`) and evaluate DIR")
            onnx_dir = Path(tmp)
            exporter(adapter, onnx_dir)
        runner = onnx_runner(backend, onnx_dir, adapter, precision, _parity_dir(source) or onnx_dir)
        try:
            yield runner
        finally:
            runner.close()


def evaluate_model(source: str | Path | Adapter | None = None, data: str | Path = "shapes", backend: str = "torch",
                   *, template: str | None = None, n_images: int | None = None, n_retrieval: int | None = None,
                   batch_size: int = BATCH_SIZE, exporter: Exporter | None = None, device: str | None = None,
                   precision: str | None = None, dtype: str | None = None) -> dict:
    """Load a model, evaluate it on `data` with `backend`, and return the result.

    Args:
        source: hub id, checkpoint, prune/build directory, a loaded Adapter,
            or None for the bundled model.
        data: "shapes", a JSONL file of image-caption pairs, or an image folder.
        backend: one of `BACKENDS` (torch, onnx, onnx-int8, openvino, openvino-int8).
        template: prompt template for an image folder's classes.
        n_images: attribute images of the shapes suite (None: 1000; refused for other data: `resolve_data`).
        n_retrieval: retrieval pairs of the shapes suite.
        batch_size: images or texts per forward pass.
        exporter: see `open_runner` (backend "onnx" on a model without ONNX towers).
        device: for backend "torch": auto | cpu | cuda | cuda:N, where the model runs (None: where it is).
        precision: for the OpenVINO backends: auto | f32 | bf16 | f16 (None: auto).
        dtype: for backend "torch": float32 | bfloat16 (None: float32 on the CPU, as loaded on a GPU).

    Returns:
        The result of `evaluate` plus "model", "backend", "precision" (per tower, what ran), "gate" (below
        fp32: the cosines against the fp32 towers it passed) and "seconds".
    """
    from mfdeploy.models import load, resolve_checkpoint

    t0 = time.perf_counter()
    backend = backend_name(backend)
    export = export_source(source)  # a plain or quantized export directory: its own towers run
    exported = export.model_source if export is not None else None  # the checkpoint that prepares its inputs
    if export is not None:  # a backend that cannot run them, or a tower changed since, is named here
        export.check(backend)
    if not isinstance(source, Adapter):
        resolve_checkpoint(exported or source)  # a missing path fails at once, before the data is rendered
    if not is_whole(batch_size) or batch_size <= 0:  # a Python caller's "8", 2.5, None or True
        raise UserError(f"--batch-size {batch_size!r:.40}: must be a positive whole number")
    from mfdeploy.models.device import resolve_device

    place = resolve_device(device) if device is not None and backend == "torch" else None  # bad --device: now
    check_options(backend, precision, dtype, place is not None and place.type == "cuda")
    if backend != "torch":  # fail before the slow steps
        _onnx_dir(source, backend)
    evalset = resolve_data(data, template, n_images, n_retrieval)  # bad data fails before the model loads
    adapter = source if isinstance(source, Adapter) else load(exported or source)  # an export: its checkpoint's
    if place is not None:
        adapter.model.to(place)
    prepared = prepare(adapter, evalset)
    with open_runner(source, adapter, backend, exporter, precision, dtype) as runner:
        result = {**evaluate(runner, prepared, batch_size), **precision_record(runner)}
        recorded = export.recorded_gate(runner.precision) if export is not None else None
    if recorded is not None:  # a quantized export: the gate quantize ran against the fp32 export, not re-run
        result["gate"] = recorded
    # "model" is the dense id a pruned checkpoint came from; "pruned" says how it was pruned
    label = {"pruned": {k: adapter.origin.get(k) for k in ("method", "ratio", "pattern")}} if adapter.origin else {}
    model_id = (export.manifest.model_id if export is not None else None) or adapter.model_id
    return {"model": model_id, **label, "backend": backend, **result,
            "seconds": round(time.perf_counter() - t0, 2)}


def dense_reference(source: str | Path | Adapter | None) -> str | None:
    """The dense model a prune or build directory was made from (`"model"` of its manifest), else None."""
    from mfdeploy.artifacts.manifest import source_model

    if source is None or isinstance(source, Adapter):
        return None
    return source_model(Path(source).expanduser())


def _names_no_dense(source: str | Path | Adapter | None) -> bool:
    from mfdeploy.artifacts.layout import SOURCE_MANIFESTS

    if source is None or isinstance(source, Adapter):
        return False
    return any((Path(source).expanduser() / name).is_file() for name in SOURCE_MANIFESTS)


def evaluate_with_retention(source: str | Path | Adapter | None = None, data: str | Path = "shapes",
                            backend: str = "torch", *, template: str | None = None, dense: bool = True,
                            progress: Callable[[str], None] | None = None, **kwargs) -> dict:
    """`evaluate_model`, plus the dense model's result and the retention when the dense model is known.

    The dense model (named by the `build.json`/`prune.json` of a build or
    prune directory) is evaluated on the same data with PyTorch, the
    reference backend. When it cannot be loaded, the result says why under
    "retention_error" instead of failing the evaluation.

    Args:
        source: as for `evaluate_model`.
        data: as for `evaluate_model`.
        backend: backend of the evaluated model.
        template: as for `evaluate_model`.
        dense: evaluate the dense model when it is known (False: skip it).
        progress: called with a short message before each model is evaluated.
        **kwargs: passed on to `evaluate_model` (sizes, batch size).

    Returns:
        The result of `evaluate_model`, with "dense" (the dense model's
        result) and "retention" (see `mfdeploy.eval.retention`) when known.
    """
    from mfdeploy.errors import MfdeployError

    say = progress or (lambda _msg: None)
    say(f"evaluating {source or 'the bundled model'} ({backend})")
    result = evaluate_model(source, data, backend, template=template, **kwargs)
    reference = dense_reference(source) if dense else None
    if reference is None:
        if dense and _names_no_dense(source):  # a build or prune directory whose manifest lost its "model"
            result["retention_error"] = (f"{source}: its manifest names no dense model (\"model\" is empty), "
                                         "so there is nothing to compare with")
        return result
    say(f"evaluating the dense model {reference} (torch)")
    dense_kwargs = {k: v for k, v in kwargs.items() if k not in ("precision", "dtype")}  # the fp32 reference
    try:
        dense_result = evaluate_model(reference, data, "torch", template=template, **dense_kwargs)
    except MfdeployError as e:
        result["retention_error"] = f"dense model {reference}: {e}"
        return result
    result["dense"] = dense_result
    result["retention"] = retention(result, dense_result)
    return result
