"""How tune measures a candidate: its quality through the backend and precision it would be served with, and its
speed with `mfdeploy bench`'s interleaved timing against the dense model on the same backend, in the same run.

Quality is the mean zero-shot accuracy over the evaluation data's tasks (the shapes suite, an image folder), or,
for image-caption pairs that have no tasks, the mean of image-to-text and text-to-image recall@1; the record
names which. Speed is the p50 latency of embedding `batch` images and `batch` texts (vision + text), the
candidate and the dense fp32 towers on the same backend taking turns call by call (`bench.timing.time_interleaved`).
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mfdeploy.artifacts.layout import ONNX_DIR, ONNX_FILES, ONNX_INT8_DIR, PRUNED_DIR
from mfdeploy.errors import UserError

SCREEN_IMAGES = 200  # the cheap first rung on the shapes suite: images per task and retrieval pairs
# backend, precision -> (eval backend, its options)
EVAL: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("ort-cpu", "fp32"): ("onnx", {}),
    ("ort-cpu", "int8"): ("onnx-int8", {}),
    ("openvino", "fp32"): ("openvino", {"precision": "f32"}),
    ("openvino", "bf16"): ("openvino", {"precision": "bf16"}),
    ("openvino", "int8"): ("openvino-int8", {}),
    ("torch", "fp32"): ("torch", {}),
    ("torch", "bf16"): ("torch", {"dtype": "bfloat16"}),
    ("torch-cuda", "fp32"): ("torch", {"device": "cuda"}),  # the dense reference's quality
    ("torch-cuda", "fp16"): ("torch", {"device": "cuda", "dtype": "float16"}),  # what the torch-cuda runner serves
}
ONNX_BASED = ("ort-cpu", "openvino")  # backends that time the build's ONNX files (they need onnx_dense/)
# backend -> the quantize targets its int8 candidates are served from: both read onnx_int8/ ("ort"); TensorRT's QDQ
# towers ("trt", onnx_qdq/) serve no backend tune drives, so an INT8 build of a tune never makes them
INT8_TARGETS: dict[str, tuple[str, ...]] = {"ort-cpu": ("ort",), "openvino": ("ort",)}


def calib_samples(calib: str | None, space: Any) -> int:
    """The calibration pairs each prune (and INT8 calibration) of a tune asks for: the space's `[calibration]
    samples`, else prune's default, or all that a shorter `--calib` file holds (the tune says so once, before its
    first trial; asking each prune for more would warn in every trial, naming an option tune does not have)."""
    from mfdeploy.data.batching import pairs_available, parse_calib
    from mfdeploy.pruning import PruneConfig

    wanted = int(space.calib_samples or PruneConfig.calib_samples)
    source = parse_calib(calib if calib is not None else "shapes")
    assert source is not None  # a value always gives a source
    return pairs_available(source, wanted) or wanted


def runner_options(backend: str, precision: str) -> tuple[str, dict[str, Any]]:
    """(build variant, make_runner options) that serve `precision` on `backend`; fp32 is also the dense baseline."""
    if precision == "int8":
        return "int8", {}
    if backend == "openvino":
        return "pruned", {"precision": "bf16" if precision == "bf16" else "f32"}
    if backend.startswith("torch"):
        return "pruned", {"dtype": "bfloat16" if precision == "bf16" else None}
    return "pruned", {}


def dense_onnx(out: Path, model: str | None) -> Path:
    """The dense model's ONNX towers in `out` (the timing baseline of the ONNX backends), exported once."""
    from mfdeploy.artifacts.io import atomic_dir
    from mfdeploy.exporting import export_towers
    from mfdeploy.models import load

    if not all((out / f).is_file() for f in ONNX_FILES.values()):
        with atomic_dir(out, force=True) as tmp:
            export_towers(load(model), tmp)
    return out


def dense_reference(path: Path, model: str | None, data: str, backend: str, say: Callable[[str], None]) -> dict:
    """The dense model's quality, first rung and full (through `backend`): read from `path` (a tune's dense.json),
    else measured and written there; a damaged file is named in a warning and measured again."""
    import json

    from mfdeploy.artifacts.io import write_json
    from mfdeploy.tuning.records import dense_problem

    if path.is_file():
        try:
            dense = json.loads(path.read_text())
            problem = dense_problem(dense)
            if problem:
                raise ValueError(problem)
            return dense
        except (OSError, ValueError) as e:
            say(f"warning: {path} is damaged ({e}): measuring the dense model again")
    say("tune: evaluating the dense model (first rung and full, through the backend)")
    dense = {"screen": evaluate(model, data, backend, "fp32", screen=True),
             "full": evaluate(model, data, backend, "fp32")}
    write_json(path, dense)
    return dense


def quality_of(result: dict, dense: dict) -> dict[str, Any]:
    """Mean accuracy (or recall), its drop from dense in points, and the mean per-task retention."""
    if result.get("tasks"):
        metric, values, reference = "mean zero-shot accuracy", result["tasks"], dense["tasks"]
    else:
        keys = ("i2t_r1", "t2i_r1")
        metric = "mean retrieval recall@1 (image-to-text, text-to-image)"
        values = {k: result["retrieval"][k] for k in keys}
        reference = {k: dense["retrieval"][k] for k in keys}
    value = statistics.fmean(values.values())
    dense_value = statistics.fmean(reference.values())
    per_task = {k: (v / reference[k] if reference[k] > 0 else 1.0) for k, v in values.items()}
    return {"metric": metric, "value": value, "dense_value": dense_value,
            "drop_points": round((dense_value - value) * 100, 4), "retention": statistics.fmean(per_task.values()),
            "retention_per_task": per_task, "tasks": result.get("tasks", {}), "retrieval": result.get("retrieval", {})}


def evaluate(source: Any, data: str, backend: str, precision: str, *, screen: bool = False) -> dict:
    """`mfdeploy eval` of a build directory (or, for the dense reference, a model) through `backend` at
    `precision`; `screen`: PyTorch fp32 on a subset of the shapes suite (the whole of other data)."""
    from mfdeploy.eval import evaluate_model
    from mfdeploy.exporting import export_towers

    if screen:
        sizes: dict[str, Any] = {"n_images": SCREEN_IMAGES, "n_retrieval": SCREEN_IMAGES} if data == "shapes" else {}
        return evaluate_model(source, data, "torch", **sizes)
    name, options = EVAL[(backend, precision)]
    return evaluate_model(source, data, name, exporter=lambda a, d: export_towers(a, d), **options)


def time_candidate(build_dir: Path, backend: str, precision: str, batch: int, threads: int) -> dict[str, Any]:
    """p50 latency of the candidate and of the dense fp32 towers, interleaved, per tower at `batch`.

    Raises:
        UserError: the backend cannot run the candidate (the reason in one line).
    """
    import torch

    from mfdeploy.bench.run import time_cell
    from mfdeploy.bench.stability import load_average
    from mfdeploy.runtime.base import BackendUnavailable
    from mfdeploy.runtime.build_dir import BuildDir
    from mfdeploy.runtime.inputs import DEFAULT_TEXT_LEN, pixel_values, text_inputs
    from mfdeploy.runtime.registry import make_runner

    variant, options = runner_options(backend, precision)
    _, dense_options = runner_options(backend, "fp32")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    runners = {}
    try:
        with BuildDir(build_dir) as build:
            adapter = build.adapter("pruned")
            length = adapter.fixed_text_len or min(DEFAULT_TEXT_LEN, adapter.max_text_len)
            common = dict(threads=threads, max_batch=batch, max_text_len=length, spin=False)
            try:
                runners["pruned"] = make_runner(backend, build, variant=variant, **common, **options)
                runners["dense"] = make_runner(backend, build, variant="dense", **common, **dense_options)
            except BackendUnavailable as e:
                raise UserError(f"{backend} cannot run this candidate: {e}") from None
            images = pixel_values(batch, adapter.image_size, seed=batch)
            ids, mask = text_inputs(batch, length, tokenizer=adapter.tokenizer)
            load_start = load_average()
            towers: dict[str, Any] = {}
            for tower in ("vision", "text"):  # `mfdeploy bench`'s cell: the candidate and dense take turns
                rows = {r["variant"]: r for r in time_cell(runners, backend, tower, batch, length, {batch: images},
                                                           {batch: (ids, mask)}, 3, 20, 0.5, threads)}
                cand, dense = rows["pruned"], rows["dense"]
                towers[tower] = {"p50_ms": cand["p50_ms"], "dense_p50_ms": dense["p50_ms"], "p95_ms": cand["p95_ms"],
                                 "iters": cand["iters"], "speedup": dense["p50_ms"] / cand["p50_ms"],
                                 "precision": cand["precision"]}
            load_end = load_average()
    finally:
        for runner in runners.values():
            runner.close()
        torch.set_num_threads(before)
    latency = sum(t["p50_ms"] for t in towers.values())
    dense = sum(t["dense_p50_ms"] for t in towers.values())
    return {"speedup": dense / latency, "latency_ms": latency, "dense_latency_ms": dense, "towers": towers,
            "batch": batch, "backend": backend, "threads": threads, "load_avg_start": load_start,
            "load_avg_end": load_end, "shared_with": None}


def size_mb(build_dir: Path, backend: str, precision: str) -> float:
    """The towers this candidate serves, on disk: the ONNX files (with external data) or the checkpoint."""
    if backend in ONNX_BASED:
        folder = build_dir / (ONNX_INT8_DIR if precision == "int8" else ONNX_DIR)
        files = [f for f in folder.glob("*.onnx*") if f.is_file()] + \
            [f for f in folder.glob("*.data") if f.is_file()]
    else:
        files = [f for f in (build_dir / PRUNED_DIR).glob("*.safetensors")]
    total = sum(f.stat().st_size for f in set(files)) / 2**20
    return round(total / (2 if precision in ("bf16", "fp16") and backend.startswith("torch") else 1), 3)


def link_tree(source: Path, dest: Path) -> None:
    """`dest` as a copy of `source` made of hard links where the file system allows (the dense towers are
    shared by every build of the tune)."""
    import os

    if dest.exists():
        return
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in source.iterdir():
        try:
            os.link(f, tmp / f.name)
        except OSError:
            shutil.copy2(f, tmp / f.name)
    tmp.rename(dest)


__all__ = ["EVAL", "INT8_TARGETS", "SCREEN_IMAGES", "dense_onnx", "dense_reference", "evaluate", "link_tree",
           "quality_of", "runner_options", "size_mb", "time_candidate"]
