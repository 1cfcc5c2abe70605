"""`mfdeploy prune` as a pipeline: load, prune, then write masks, the checkpoint, prune.json and the plot.

The algorithms (`mfdeploy.pruning.prune_model`) work on a loaded model; this
module owns the files, written into a temporary directory and renamed into
place only when all of them are there (`mfdeploy build` writes the same
files through `write_prune_outputs`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mfdeploy.artifacts.io import atomic_dir, check_out_dir, write_json
from mfdeploy.artifacts.layout import MASKS_FILE, ORIGIN_FILE, PRUNE_MANIFEST, PRUNED_DIR, SPARSITY_PLOT, STRUCTURE_FILE
from mfdeploy.models import Adapter, load
from mfdeploy.models.integrity import artifact_records
from mfdeploy.progress import Reporter
from mfdeploy.pruning.checks import check_cache_outside, validate
from mfdeploy.pruning.config import PruneConfig
from mfdeploy.pruning.masks import save_masks
from mfdeploy.pruning.record import record_for_json
from mfdeploy.pruning.run import prune_model


def run_prune(cfg: PruneConfig, out: Path, force: bool = False, reporter: Reporter | None = None) -> dict:
    """`mfdeploy prune`: write masks.safetensors, pruned/, prune.json and sparsity.png into `out`."""
    validate(cfg)
    out = Path(out)
    check_out_dir(out, force, sources=(cfg.model,))
    check_cache_outside(cfg, out)
    t0 = time.perf_counter()
    adapter = load_placed(cfg)
    load_s = time.perf_counter() - t0
    record = prune_model(adapter, cfg, reporter=reporter)
    record["timings"]["load_s"] = load_s
    with atomic_dir(out, force) as tmp:
        t1 = time.perf_counter()
        write_prune_outputs(adapter, record, tmp)
        record["timings"]["write_s"] = time.perf_counter() - t1
        record["timings"]["total_s"] = time.perf_counter() - t0
        # sha256 of every file, as build.json has: `load` checks pruned/ and masks.safetensors against it
        record["artifacts"] = artifact_records(tmp)
        write_json(tmp / PRUNE_MANIFEST, record_for_json(record))
    return record


def load_placed(cfg: PruneConfig) -> Adapter:
    """The model of `cfg`, on `cfg.device` in `cfg.dtype` (statistics and scores stay float32 whatever it is)."""
    from mfdeploy.models.device import resolve_device, resolve_dtype

    adapter = load(cfg.model)
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    param = next(adapter.model.parameters())
    # a checkpoint saved in float16 loads in float16: it is pruned in the --dtype asked (float32 by default)
    if device.type != "cpu" or dtype != param.dtype:
        adapter.model.to(device=device, dtype=dtype)
    return adapter


def write_prune_outputs(adapter: Adapter, record: dict, out: Path) -> None:
    """masks.safetensors (unstructured), pruned/ checkpoint, sparsity.png.

    The checkpoint is written in float32 from the CPU whatever device and precision pruning ran in, so
    export, evaluation and serving read it as they read any other (half-precision values widen exactly).
    """
    from mfdeploy.pruning.plot import plot_sparsity

    param = next(adapter.model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        adapter.model.to(device="cpu", dtype=torch.float32)

    masks = record.get("_masks")
    if masks is not None:
        save_masks(out / MASKS_FILE, masks, {
            "method": record["method"], "score": record["score"], "budget": record["budget"],
            "ratio": record["ratio"], "pattern": record["pattern"], "model_id": record["model"], "seed": record["seed"],
        })
    adapter.save(out / PRUNED_DIR)
    (out / PRUNED_DIR / ORIGIN_FILE).write_text(json.dumps(adapter.origin, indent=2))  # set by prune_model
    if "_structure" in record:
        (out / PRUNED_DIR / STRUCTURE_FILE).write_text(json.dumps(record["_structure"], indent=2))
    plot_sparsity(record, out / SPARSITY_PLOT)



__all__ = ["run_prune", "write_prune_outputs"]
