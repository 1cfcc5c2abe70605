"""The Python API: prune, export and evaluate a Hugging Face CLIP or SigLIP model held in memory.

These functions take what a notebook or a training script already holds: a `transformers.CLIPModel` or
`SiglipModel` (any dtype, any device, fine-tuned or not) with its tokenizer and image processor, or an
adapter from `mfdeploy.load`; `export` and `evaluate` also take a path or hub
id. The CLI's `export` and `eval` verbs call these same functions.

    import mfdeploy
    model = mfdeploy.load()                       # the bundled model, or a hub id / local path
    result = mfdeploy.prune(model, ratio=0.5, calib="shapes")
    print(result.sparsity["overall"])             # 0.5: the model is pruned in place
    mfdeploy.export(model, "onnx_out")            # vision.onnx, text.onnx, export.json
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mfdeploy.api_names import check_callable, check_choice, dtype_text, python_names
from mfdeploy.errors import UserError
from mfdeploy.models.base import Adapter
from mfdeploy.models.inputs import calib_from_python

ModelLike = Any  # a transformers CLIPModel or SiglipModel, or a mfdeploy Adapter
PRUNE_OPTIONS = ("ecoflap_smax_delta", "ecoflap_samples", "mope_neuron_group", "mope_depth_share", "mope_cache",
                 "distill_steps", "distill_lr", "distill_params", "device", "dtype")  # `**options` of `prune`
EVAL_OPTIONS = ("n_images", "n_retrieval", "batch_size", "device", "precision", "dtype")  # `**sizes` of `evaluate`


@dataclass
class PruneResult:
    """What `prune` did: the masks it applied, the achieved sparsity, and the full record (prune.json's)."""

    masks: dict[str, torch.Tensor]  # parameter name -> bool tensor shaped like the weight, True = keep
    sparsity: dict  # overall, per modality, per layer
    record: dict = field(repr=False)  # everything `mfdeploy prune` writes to prune.json

    def save_masks(self, path: str | Path) -> Path:
        """Write the masks as `masks.safetensors` (metadata in the header), atomically (MoPE has none: UserError)."""
        from mfdeploy.artifacts.io import atomic_file
        from mfdeploy.pruning.masks import save_masks

        path = Path(_path_like(path, "path", none=False))
        if not self.masks:  # MoPE removes heads, neurons and layers: an empty file would pass for "nothing pruned"
            raise UserError(f"method {self.record.get('method')} removed what it pruned instead of masking it: there "
                            "are no masks to save; save the model itself (model.save_pretrained)")
        meta = {k: self.record[k] for k in ("method", "score", "budget", "ratio", "pattern", "seed")}
        meta["model_id"] = self.record["model"]
        return atomic_file(path, lambda tmp: save_masks(tmp, self.masks, meta))


def load(source: str | Path | None = None) -> Adapter:
    """Load a checkpoint: a hub id, a local directory, a prune/build directory, or None (bundled model)."""
    from mfdeploy.models import load as load_adapter

    return load_adapter(_path_like(source, "source"))


def _path_like(value: Any, name: str, none: bool = True) -> Any:
    """`value` when it is a path, a hub id or (`none`) None; a TypeError naming `name` otherwise (os.fspath's
    names no argument)."""
    if (value is None and none) or isinstance(value, (str, Path)):
        return value
    what = "a hub id or a path" if none else "a path"  # an input may be a hub id (or None); an output is a path
    raise TypeError(f"{name} must be {what} (str or pathlib.Path), not {type(value).__name__}")


def adapter_for(model: ModelLike, tokenizer: Any = None, processor: Any = None,
                model_id: str | None = None) -> Adapter:
    """An Adapter over an in-memory `CLIPModel` or `SiglipModel` (or the adapter itself, unchanged).

    The adapter is the family's (`mfdeploy.models.registry.ADAPTERS`, by the config's `model_type`).

    Args:
        model: a `transformers.CLIPModel`, `SiglipModel`, or an Adapter.
        tokenizer: the model's tokenizer (needed to calibrate from image-caption pairs, export, evaluate).
        processor: the model's image processor (same).
        model_id: the name recorded in reports (default: the config's `_name_or_path`).
    """
    if isinstance(model, Adapter):
        return model
    from mfdeploy.models.registry import adapter_for_model

    for name, part in (("tokenizer", tokenizer), ("processor", processor)):  # both are called on texts/images
        if part is not None and not callable(part):
            raise UserError(f"{name}: expected the model's {name} (a transformers object), not {type(part).__name__}")
    adapter_cls = adapter_for_model(model)  # UserError for anything but a supported family's model
    source = model_id or getattr(model.config, "_name_or_path", "") or f"in-memory {type(model).__name__}"
    if model_id:
        model.config._name_or_path = model_id
    return adapter_cls(model, tokenizer, processor, source=source)


def _globs(value: Any, name: str) -> list[str]:
    """`include`/`exclude` as a list of globs: one string is one glob (`list("*q_proj")` would be its letters)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Iterable) or not all(isinstance(g, str) for g in value):
        raise UserError(f"{name}: a glob or a list of globs (strings), got {value!r}")
    return list(value)


@python_names(extra=PRUNE_OPTIONS)
def prune(model: ModelLike, ratio: float = 0.5, method: str = "multiflow", *, budget: str | None = None,
          pattern: str | None = None,
          calib: Any = None, tokenizer: Any = None, processor: Any = None, calib_samples: int = 256,
          batch_size: int = 32, include: Sequence[str] = (), exclude: Sequence[str] = (), seed: int = 0,
          progress: bool = False, **options: Any) -> PruneResult:
    """Prune a model in place, once, task-agnostically.

    Args:
        model: a `transformers.CLIPModel` or `SiglipModel`, or an adapter from `load`; its weights are
            masked in place (`weight *= mask`; copy it first to keep the dense one).
        ratio: fraction of prunable weights to remove, in (0, 1).
        method: multiflow | magnitude | wanda | random | ecoflap | mope (the score, and its default
            layer budget).
        budget: uniform | global | modality | ecoflap, overriding the method's layer budget
            (unstructured methods only; None keeps the method's own).
        pattern: "2:4" for the semi-structured pattern (ratio 0.5), None for unstructured.
        calib: "shapes" (bundled model), a JSONL path of image-caption pairs, a list of
            `(PIL.Image, caption)` pairs, or a list of model-input batches (dicts with
            `pixel_values`, `input_ids`, `attention_mask`). Needed by every method but
            random and magnitude.
        tokenizer, processor: the model's own, for a `CLIPModel`/`SiglipModel` calibrated from pairs or files.
        calib_samples, batch_size: calibration pairs used, and pairs per forward pass.
        include, exclude: fnmatch globs over prunable layer names (a list, or one glob as a string).
        seed: seeds the random score and ECoFLaP's perturbations.
        progress: show progress bars on stderr.
        **options: further `PruneConfig` fields (e.g. `ecoflap_smax_delta`,
            `mope_depth_share`, `distill_steps`, `distill_lr`, `distill_params`).

    Returns:
        A `PruneResult`; `result.record` is what `mfdeploy prune` writes to prune.json.
    """
    from mfdeploy.progress import tqdm_reporter
    from mfdeploy.pruning.run import PruneConfig, prune_model, record_for_json

    check_choice("progress", progress, (True, False))
    dtype_text(options)
    adapter = adapter_for(model, tokenizer, processor)
    source = calib_from_python(adapter, calib, calib_samples, batch_size)
    try:
        cfg = PruneConfig(ratio=ratio, model=adapter.model_id, method=method, budget=budget, pattern=pattern,
                          calib=str(calib) if isinstance(calib, (str, Path)) else None,
                          calib_samples=calib_samples, batch_size=batch_size, include=_globs(include, "include"),
                          exclude=_globs(exclude, "exclude"), seed=seed, show_progress=progress, **options)
    except TypeError as e:  # an unknown keyword: named as prune's (`python_names`)
        raise TypeError(str(e).replace("PruneConfig.__init__()", "prune()")) from None
    with tqdm_reporter(progress) as reporter:
        record = prune_model(adapter, cfg, source=source, reporter=reporter)
    return PruneResult(masks=record.get("_masks") or {}, sparsity=record["sparsity"],
                       record=record_for_json(record))


def _source(model: ModelLike | str | Path | None, tokenizer: Any, processor: Any) -> Any:
    """A path, hub id or None as it is (loaded where it is used), else an Adapter over the in-memory model."""
    return model if isinstance(model, (str, Path)) or model is None else adapter_for(model, tokenizer, processor)


@python_names()
def export(model: ModelLike | str | Path | None, out_dir: str | Path, *, tokenizer: Any = None,
           processor: Any = None, opset: int = 17, force: bool = False, external_data: bool | None = None,
           on_step: Callable[[str], None] | None = None) -> dict:
    """Export both towers to ONNX in `out_dir` (vision.onnx, text.onnx, export.json), parity-checked.

    Args:
        model: a `CLIPModel`, `SiglipModel` or Adapter, or a hub id, checkpoint or prune directory (None: the
            bundled model).
        out_dir: the output directory; it must not exist unless `force`.
        tokenizer, processor: the model's own, for a `CLIPModel`/`SiglipModel`.
        opset: ONNX opset (>= 17).
        force: replace an output directory mfdeploy wrote.
        external_data: weights in `.onnx.data` files (None: only for models near 2 GiB).
        on_step: called with a short description before each long step.

    Returns:
        The manifest written to `out_dir/export.json`.
    """
    from mfdeploy.pipelines.export import export_model

    out = Path(_path_like(out_dir, "out_dir", none=False)).expanduser()  # as `load` takes "~/ckpt"
    check_choice("force", force, (True, False))
    check_choice("external_data", external_data, (None, True, False))
    check_callable("on_step", on_step)
    return export_model(_source(model, tokenizer, processor), out, opset=opset, force=force,
                        external_data=external_data, on_step=on_step)


@python_names(extra=EVAL_OPTIONS)
def evaluate(model: ModelLike | str | Path | None, data: str | Path = "shapes", *, tokenizer: Any = None,
             processor: Any = None, backend: str = "torch", retention: bool | str = "if known",
             template: str | None = None, progress: Callable[[str], None] | None = None, **sizes: Any) -> dict:
    """Zero-shot accuracy and retrieval recall on "shapes", a JSONL of pairs, or an image folder.

    Args:
        model: a `CLIPModel`, `SiglipModel` or Adapter (run on the device it is on), or a hub id, checkpoint,
            prune or build directory (None: the bundled model).
        data: "shapes", a JSONL file of image-caption pairs, or an image folder.
        tokenizer, processor: the model's own, for a `CLIPModel`/`SiglipModel`.
        backend: torch | onnx | onnx-int8 | openvino | openvino-int8 (serve's names ort-cpu and ort-int8 are onnx and
            onnx-int8).
        retention: for a prune or build directory, also evaluate the dense model it came from and
            add "dense" and "retention" to the result. "if known" (the default, as `mfdeploy eval`): for other
            models, nothing; True: for other models, "retention_error" says why there is none; False: never
            (`mfdeploy eval --no-retention`).
        template: prompt template of an image folder's classes.
        progress: called with a short message before each model is evaluated (True: printed to stderr).
        **sizes: `n_images`, `n_retrieval` (shapes suite), `batch_size`, `device` (backend torch: auto | cpu |
            cuda | cuda:N), `precision` (OpenVINO: auto | f32 | bf16 | f16), `dtype` (torch: float32 | bfloat16,
            or `torch.bfloat16`).
    """
    from mfdeploy.eval import evaluate_with_retention
    from mfdeploy.exporting import export_towers

    dtype_text(sizes)
    check_choice("retention", retention, (True, False, "if known"))
    # backend "onnx" on a checkpoint without towers exports them to a temporary directory (eval never imports export)
    result = evaluate_with_retention(_source(model, tokenizer, processor), data, backend, template=template,
                                     dense=bool(retention), progress=_say(progress), exporter=export_towers, **sizes)
    if retention is True and "retention" not in result and "retention_error" not in result:  # asked, not possible
        result["retention_error"] = ("retention=True: the model is not a prune or build directory, so no dense "
                                     "model is known to compare it with")
    return result


@python_names()
def tune(model: str | Path | None = None, *, out: str | Path = "tune", calib: str | Path | None = None,
         eval_data: str | Path | None = None, backend: str = "ort-cpu", batch_size: int = 8,
         max_drop: float | None = None,
         min_speedup: float | None = None, max_latency_ms: float | None = None, max_size_mb: float | None = None,
         time_budget: float = 15.0, space: str = "default", force: bool = False, seed: int = 0,
         pick: int | None = None, progress: bool | Callable[[str], None] | None = None) -> Any:
    """`mfdeploy tune`: search method x ratio x precision on `backend` and `eval_data`, build the pick.

    Args:
        model: hub id or checkpoint directory (None: the bundled model).
        out: the tune directory (journal, tune.json/.md, pareto.png, best/); an earlier tune there resumes.
        calib: calibration pairs ("shapes" or a JSONL; needed for a model that is not bundled).
        eval_data: quality data (JSONL of pairs or image folder; default: the shapes suite, bundled models).
        backend: ort-cpu | ort-int8 | openvino | openvino-int8 | torch | torch-cuda.
        batch_size: images and texts per timed call.
        max_drop, min_speedup, max_latency_ms, max_size_mb: the constraints of the pick (none: max_drop 1).
        time_budget: minutes of search.
        space: default | quick | a TOML file.
        force: start over in an existing tune directory.
        seed: search order and prune seed.
        pick: build trial N of the tune in `out` as out/best without searching (the other arguments are ignored).
        progress: called with one line per finished trial (default, or True: printed to stderr; False: none).

    Returns:
        A `mfdeploy.tuning.TuneResult`: `.trials` (every trial record), `.front` (the non-dominated ones),
        `.pick` and `.why`, `.out`, `.summary` (what tune.json holds).

    Raises:
        UserError: a bad argument, or no candidate meeting the constraints (the message names the closest).
    """
    from mfdeploy.tuning import Constraints, TuneConfig, pick_trial, run_tune

    out = _path_like(out, "out", none=False)
    check_choice("force", force, (True, False))  # force="no" would start the tune over
    if not isinstance(space, (str, Path)):
        raise UserError(f"space {space!r:.40}: expected default, quick or the path of a TOML file")
    if pick is not None:
        if not isinstance(pick, int) or isinstance(pick, bool):
            raise UserError(f"pick {pick!r:.40}: expected a trial number (a whole number)")
        return pick_trial(Path(out), pick, say=_say(progress, tune=True))
    # paths as text, as the CLI gives them: tune_settings.json holds text, and a resumed tune compares with it
    # (a pathlib.Path never equals its text: the same call again was refused as "different settings")
    model, calib, eval_data = (None if v is None else str(_path_like(v, name))
                               for v, name in ((model, "model"), (calib, "calib"), (eval_data, "eval_data")))
    cfg = TuneConfig(out=Path(out), model=model, calib=calib, eval_data=eval_data,
                     backend=backend, batch_size=batch_size,
                     constraints=Constraints(max_drop, min_speedup, max_latency_ms, max_size_mb),
                     time_budget_min=time_budget, space=str(space), force=force, seed=seed)
    return run_tune(cfg, say=_say(progress, tune=True))


def _say(progress: Any, tune: bool = False) -> Callable[[str], None] | None:
    """`progress` of `evaluate` and `tune`: a function of one line, or True (lines to stderr) or False/None
    (none; None is tune's own default, its lines on stderr)."""
    if progress is False and tune:
        return lambda line: None
    if progress is True:
        import sys

        return lambda line: print(line, file=sys.stderr)
    if progress is None or progress is False or callable(progress):
        return progress or None
    raise UserError(f"progress: True, False or a function taking one line of text, not {progress!r:.40}")


__all__ = ["PruneResult", "adapter_for", "evaluate", "export", "load", "prune", "tune"]
