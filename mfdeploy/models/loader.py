"""`load(model_id_or_path)`: hub id, local checkpoint, or a prune/build directory -> Adapter."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from mfdeploy.artifacts import guards
from mfdeploy.artifacts.layout import MANIFESTS as OUTPUT_MANIFESTS
from mfdeploy.artifacts.layout import MASKS_FILE, ORIGIN_FILE, PRUNED_DIR
from mfdeploy.artifacts.tempdirs import moved_aside
from mfdeploy.errors import UserError
from mfdeploy.models import hub
from mfdeploy.models.base import Adapter
from mfdeploy.models.hf import HFAdapter
from mfdeploy.models.integrity import MANIFESTS, verify_artifacts
from mfdeploy.models.processors import load_image_processor, load_tokenizer, one_line, quiet_transformers
from mfdeploy.models.registry import adapter_class, model_class, read_config
from mfdeploy.models.structure import STRUCTURE_FILE  # written by structured pruning: the cut shapes
from mfdeploy.zoo import BUNDLED, bundled_name

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # Hugging Face repo ids: owner/name, word characters, '-' and '.'
CHECKED_FILES = (f"{PRUNED_DIR}/", MASKS_FILE)  # what loading a prune/build directory relies on


def resolve_checkpoint(source: str | Path | None) -> tuple[Path | str, str]:
    """Where the weights are, and the model id to record.

    `None`/"bundled" is the default bundled model, `mfdeploy/siglip-shapes` (or `siglip-shapes`) the bundled
    SigLIP; a prune or build directory resolves
    to its `pruned/` checkpoint; `owner/name` that is not an existing path is
    taken as a hub id (a bare name, or a path under an existing folder, is a
    path that does not exist).
    """
    name = bundled_name(source) if source is None or not Path(str(source)).exists() else None
    if name is not None:
        where = BUNDLED[name]
        if not (where / "config.json").is_file():
            raise UserError(f"the bundled model {name} is missing from {where}: reinstall mfdeploy")
        return where, name
    assert source is not None  # None is the default bundled model, returned above
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: not a directory (expected a model checkpoint or a prune/build directory)")
        if (path / PRUNED_DIR / "config.json").is_file():
            path = path / PRUNED_DIR
        elif not (path / "config.json").is_file() and any((path / m).is_file() for m in MANIFESTS):
            what = "build" if (path / MANIFESTS[0]).is_file() else "prune"
            raise UserError(f"{path}: no {PRUNED_DIR}/ checkpoint (an incomplete {what} directory: rerun "
                            f"`mfdeploy {what}`)")
        elif not (path / "config.json").is_file() and (made := [m for m in OUTPUT_MANIFESTS if (path / m).is_file()]):
            # an export, quantize, engine or Triton output holds towers, not the weights this command reads
            raise UserError(f"{path}: an output of mfdeploy ({made[0]}), not a model checkpoint: pass the checkpoint, "
                            "prune or build directory it was made from")
        adapter_class(read_config(path), path)  # an unsupported family fails here, before any weights load
        # recorded absolute: records read from another folder (retention's dense model) find it, never the hub
        return path, str(path.resolve())
    text = str(source)
    first = text.split("/", 1)[0]
    # a path (relative, absolute, or under a folder that exists here, e.g. a tune's `best/` not made yet)
    # a hub id is owner/name of letters, digits, - _ . (a trailing slash, as a shell completes a folder, is a path)
    looks_local = (text.startswith((".", "/", "~")) or "\\" in text or ("/" in text and not _HUB_ID.fullmatch(text))
                   or ("/" in text and Path(first).expanduser().is_dir()))
    if looks_local:
        raise UserError(moved_aside(path) or f"{text}: model path does not exist")
    if "/" not in text:  # CLIP and SigLIP checkpoints on the hub are owner/name; a bare word is a mistyped path
        raise UserError(moved_aside(path) or f"{text}: no such file or directory (a Hugging Face model id has the "
                        "form owner/name, e.g. openai/clip-vit-base-patch32)")
    return text, text


def recorded_checkpoint(source: str, record: Path) -> Path | str:
    """The checkpoint a record (export.json's `model.source`) names, found as `load` finds it: a bundled model, a
    local folder, or a hub id (returned as is).

    Raises:
        UserError: naming `record`: a local checkpoint that is gone, or a name that is none of these (what the
            Python API records for a model held in memory: nothing to read its tokenizer and image processor from).
    """
    try:
        return resolve_checkpoint(source)[0]
    except UserError as e:
        if source.startswith((".", "/", "~")) or _HUB_ID.fullmatch(source):
            raise UserError(f"{record}: the model it was exported from, {source}, is gone ({e}); its tokenizer and "
                            "image processor prepare the inputs") from None
        raise UserError(f"{record}: names the model {source!r}, neither a folder here nor a Hugging Face id "
                        "(owner/name): a model held in memory when it was exported names no checkpoint for the "
                        "tokenizer and image processor; save it with both (save_pretrained) and export that "
                        "folder") from None


def output_root(checkpoint: Path) -> Path | None:
    """The prune or build directory whose `pruned/` checkpoint this is, or None."""
    if checkpoint.name == PRUNED_DIR and any((checkpoint.parent / m).is_file() for m in MANIFESTS):
        return checkpoint.parent
    return None


def read_origin(checkpoint: Path) -> dict[str, Any] | None:
    """The `mfdeploy_origin.json` of a pruned checkpoint (model_id, method, ratio, pattern), or None."""
    path = checkpoint / ORIGIN_FILE
    if not path.is_file():
        return None
    try:
        origin = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({one_line(e)}); rerun the prune that wrote it") from None
    if not isinstance(origin, dict):
        raise UserError(f"{path}: not a JSON object; rerun the prune that wrote it")
    return origin


def check_weight_files(checkpoint: Path) -> None:
    """Open the header of every safetensors file of a local checkpoint: a truncated one is named here.

    Raises:
        UserError: a file that safetensors cannot open (truncated, or not a safetensors file).
    """
    from safetensors import safe_open

    for f in sorted(checkpoint.glob("*.safetensors")):
        if not os.access(f, os.R_OK):  # safetensors says "No such file or directory" of a file it may not read
            raise UserError(f"{f}: permission denied: this user cannot read it (save_pretrained writes it "
                            "readable by its owner only); make it readable, e.g. chmod a+r")
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # SafetensorError, OSError: both mean the file cannot be used
            raise UserError(f"{f}: truncated or corrupt safetensors file ({one_line(e)}); rewrite it "
                            "(rerun the prune or save_pretrained that made it)") from None


def _config(where: Path | str) -> dict[str, Any]:
    """config.json of a local checkpoint, or of a hub id (fetched, or read from the local cache)."""
    if isinstance(where, Path):
        return read_config(where)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(where, **hub.load_kwargs(where)).to_dict()
    except (OSError, ValueError, KeyError) as e:
        raise hub.not_cached(where, "config") or UserError(f"cannot load {where}: {one_line(e)}") from None


def model_config(source: str | Path | None) -> dict[str, Any]:
    """config.json of a model as `load` would find it (bundled, local, prune/build directory or hub id)."""
    return _config(resolve_checkpoint(source)[0])


def _load_weights(where: Path | str, adapter: type[HFAdapter]):
    model_cls = model_class(adapter)
    if isinstance(where, Path):
        check_weight_files(where)
    if isinstance(where, Path) and (where / STRUCTURE_FILE).is_file():
        from mfdeploy.models.structure import load_structured

        return load_structured(where, model_cls)
    loaded: Any = model_cls.from_pretrained(where, output_loading_info=True, **hub.load_kwargs(where))
    model, info = loaded  # (model, {"missing_keys", "unexpected_keys", "mismatched_keys", ...})
    # transformers initialises what the checkpoint lacks at random, with a warning only: a cut or edited weights
    # file would then evaluate, export and pass its parity check as a random model
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith("position_ids"))
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        what = (f"lacks {len(missing)} weight(s) the model needs ({guards.some(missing)})" if missing else
                f"has {len(mismatched)} weight(s) of the wrong shape ({guards.some(mismatched)})")
        raise UserError(f"{where}: the checkpoint {what}; they would be random. Was the weights file cut or "
                        "edited? Use the checkpoint as saved (save_pretrained)")
    return model


def load(source: str | Path | None = None, need_processors: bool = True) -> Adapter:
    """Load a dual-encoder checkpoint as the Adapter of its family (`registry.ADAPTERS`, by `model_type`).

    A prune or build directory is first checked against the sha256 its
    manifest records for `pruned/` and `masks.safetensors`.

    Args:
        source: a Hugging Face hub id (`openai/clip-vit-base-patch32`, `google/siglip-base-patch16-224`), a local
            checkpoint directory, a `mfdeploy prune`/`build` output directory,
            or None for the bundled reference model.
        need_processors: load the tokenizer and image processor now, so a
            checkpoint without them fails here, naming the missing file. False
            (e.g. `mfdeploy info`): they load on first use, and a checkpoint
            saved with only `model.save_pretrained` still loads.

    Raises:
        UserError: no such model, a family mfdeploy does not support (SigLIP 2 NaFlex is
            refused by name), a file that does not match its manifest, or weights,
            tokenizer or image processor that cannot be read.
    """
    quiet_transformers()
    where, model_id = resolve_checkpoint(source)
    origin = None
    if isinstance(where, Path):
        root = output_root(where)
        if root is not None:
            verify_artifacts(root, CHECKED_FILES)
        origin = read_origin(where)
    adapter_cls = adapter_class(_config(where), source if source is not None else where)
    try:
        model = _load_weights(where, adapter_cls)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # what transformers and torch raise on bad files
        named = source if source is not None else where
        raise hub.not_cached(where, "weights") or UserError(f"cannot load the weights of {named}: "
                                                            f"{one_line(e)}") from None
    if origin is not None:
        model_id = str(origin.get("model_id", model_id))
    model.config._name_or_path = model_id
    # a local checkpoint by its absolute path: export.json records it for quantize and serve, run from anywhere
    adapter = adapter_cls(model, None, None, source=str(where.resolve() if isinstance(where, Path) else where),
                          origin=origin,
                          loaders={"tokenizer": lambda: load_tokenizer(where),
                                   "image_processor": lambda: load_image_processor(where)})
    if need_processors:
        adapter.tokenizer  # noqa: B018 - load now: fail before any slow step
        adapter.check_image_processor()  # loads it, and refuses one made for another image size
    return adapter
