"""A content-addressed on-disk cache of MoPE module errors (`--mope-cache DIR`): what a run scored, another reuses.

MoPE scores layer after layer, and the errors of a layer depend only on:
the dense model (a fingerprint of its parameters and buffers, taken before
any cut), the calibration batches Z is measured on (their tensors, batch by
batch), the neuron group size, the tower, the layer's index, and which heads
and neuron groups the earlier layers of that tower kept. The other tower
plays no part: width scoring of one tower pairs it with the other tower's
dense embeddings, taken once at the start. So a run at another ratio, or one
killed halfway, leaves errors a later run finds under the same key. Depth
errors are keyed by every width decision of both towers (depth scores the
width-cut model, each tower against the other's width-cut embeddings).

Keys also name what decides the floats beyond the model and its inputs
(`environment`): the torch and transformers versions, the device (on CUDA its
name, the CUDA and cuDNN versions and the TF32 switches), the CPU (its model and
the instruction set torch dispatches to), the intra-op thread count (a parallel
reduction sums in per-thread chunks) and torch's build (its BLAS, oneDNN and
OpenMP, as `torch.__config__.show()` lists them): the same model gives slightly
different floats when any of them differs, and a cached error must be the one
this run would compute, to the bit. Values are JSON (Python writes a float so
that reading it back gives the same float). Files are written atomically; one
that cannot be read back is reported and scored again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from mfdeploy.artifacts.io import write_json
from mfdeploy.errors import MfdeployError, write_error
from mfdeploy.models.inputs import Batch

log = logging.getLogger(__name__)  # with logging unconfigured (the CLI), a warning prints as one line
FORMAT = "mfdeploy MoPE module errors"
VERSION = 2  # raise when what an error means, or a key, changes (2: the environment's fields): old files then miss


def _update(h: Any, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    for name, t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict: every parameter and buffer, its name, dtype, shape and bytes."""
    h = hashlib.sha256()
    _update(h, model.state_dict().items())
    return h.hexdigest()


def batches_fingerprint(batches: Sequence[Batch]) -> str:
    """sha256 of calibration batches, in order (the batch boundaries count: Z averages per batch)."""
    h = hashlib.sha256()
    for k, b in enumerate(batches):
        _update(h, [(f"{k}.pixel_values", b.pixel_values), (f"{k}.input_ids", b.input_ids),
                    (f"{k}.attention_mask", b.attention_mask)])
        if b.image_ids is not None and b.same_image() is not None:  # which pairs share an image changes the loss
            _update(h, [(f"{k}.image_ids", b.image_ids)])  # (`Family.loss`); none shared: the key it always had
    return h.hexdigest()


def environment(device: torch.device) -> dict[str, Any]:
    """What, beyond the model and its inputs, decides the floats MoPE computes on `device` (the module docstring);
    the same on one machine and in one process while the thread count stays."""
    import transformers

    from mfdeploy.platform import cpu_description

    env: dict[str, Any] = {
        "device": device.type, "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu": cpu_description(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "matmul_precision": torch.get_float32_matmul_precision(),
        "torch_build": hashlib.sha256(torch.__config__.show().encode()).hexdigest()[:16]}
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def _screened_ok(screened: object, lengths: dict[str, int]) -> bool:
    """`screened` names, per list, distinct indices into it (which errors are screened values: `mope_screen`)."""
    return isinstance(screened, dict) and set(screened) <= set(lengths) and all(
        isinstance(v, list) and len(set(v)) == len(v)
        and all(type(j) is int and 0 <= j < lengths[k] for j in v) for k, v in screened.items())


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class ScoreCache:
    """MoPE errors by key in a folder, one `KEY.json` each; `root=None`: a cache that holds nothing.

    Args:
        root: the folder (created when missing).
        base: what every key shares (`ScoreCache.base_of`).
    """

    def __init__(self, root: Path | None, base: dict | None = None):
        self.root = Path(root) if root is not None else None
        self.base = base or {}
        self.counts = {"width_layers": {"from_cache": 0, "scored": 0}, "depth_towers": {"from_cache": 0, "scored": 0}}
        self.unwritable: str | None = None  # why a write failed: the run then writes no more (one warning)
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise write_error(self.root, e) from None

    @staticmethod
    def base_of(model: torch.nn.Module, batches: Sequence[Batch], family: str, group: int) -> dict:
        """What every key of a run shares: the dense model, the calibration batches, the group, the environment."""
        return {"format": FORMAT, "version": VERSION, "family": family, "model": model_fingerprint(model),
                "batches": batches_fingerprint(batches), "neuron_group": group,
                **environment(next(model.parameters()).device)}

    def _path(self, parts: dict) -> Path:
        assert self.root is not None
        return self.root / f"{_digest({**self.base, **parts})}.json"

    def get(self, kind: str, parts: dict, lengths: dict[str, int]) -> dict | None:
        """The errors stored under `parts`, or None (none stored, or a file that does not hold them).

        Args:
            kind: "width_layers" | "depth_towers" (what `record` counts).
            parts: what the errors depend on beyond `base` (tower, layer, earlier decisions).
            lengths: the lists expected and their lengths, e.g. {"heads": 12, "neuron_groups": 12}.
        """
        if self.root is None:
            return None
        path = self._path(parts)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.counts[kind]["scored"] += 1
            return None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            self._corrupt(kind, path, type(e).__name__)
            return None
        errors = data.get("errors") if isinstance(data, dict) else None
        if (not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != {**self.base, **parts}
                or not isinstance(errors, dict) or set(errors) - {"screened"} != set(lengths)
                or any(not isinstance(errors[k], list) or len(errors[k]) != n
                       or not all(isinstance(v, float) for v in errors[k]) for k, n in lengths.items())
                or not _screened_ok(errors.get("screened", {}), lengths)):
            self._corrupt(kind, path, "not the errors this key names")
            return None
        self.counts[kind]["from_cache"] += 1
        return errors

    def _corrupt(self, kind: str, path: Path, why: str) -> None:
        log.warning("warning: ignoring MoPE cache file %s (%s): scoring it again", path, why)
        self.counts[kind]["scored"] += 1
        return None

    def put(self, parts: dict, errors: dict) -> None:
        """Store `errors` under `parts` (atomically); a failed write is one warning: the run goes on without the
        cache's writes (a read-only or full folder would fail each layer's)."""
        if self.root is None or self.unwritable is not None:
            return
        path = self._path(parts)
        try:
            write_json(path, {"format": FORMAT, "key": {**self.base, **parts}, "errors": errors}, default=None)
        except (MfdeployError, OSError) as e:
            self.unwritable = str(e)
            log.warning("warning: could not write to the MoPE cache (%s): this run goes on without writing to it", e)

    def record(self) -> dict | None:
        """prune.json's account of the cache: its folder and how many layers (and towers' depth) it gave."""
        if self.root is None:
            return None
        return {"dir": str(self.root), **self.counts, **({"not_written": self.unwritable} if self.unwritable else {})}


__all__ = ["ScoreCache", "batches_fingerprint", "environment", "model_fingerprint"]
