"""`load(model_id_or_path)`: hub id, local checkpoint, or a prune/build directory -> Adapter."""

from __future__ import annotations

import json
from pathlib import Path

from mfdeploy.errors import UserError, first_line
from mfdeploy.models.base import Adapter
from mfdeploy.models.structure import STRUCTURE_FILE  # written by structured pruning: the cut shapes
from mfdeploy.zoo import BUNDLED_DIR, BUNDLED_NAME

ORIGIN_FILE = "mfdeploy_origin.json"  # written by prune: which model the checkpoint came from


def resolve_checkpoint(source: str | Path | None) -> tuple[Path | str, str]:
    """Where the weights are, and the model id to record.

    `None`/"bundled" is the bundled model; a prune or build directory resolves
    to its `pruned/` checkpoint; anything that is not an existing path is
    taken as a hub id.
    """
    if source is None or str(source) in ("bundled", BUNDLED_NAME):
        if not (BUNDLED_DIR / "config.json").is_file():
            raise UserError(f"the bundled model is missing from {BUNDLED_DIR}: reinstall mfdeploy")
        return BUNDLED_DIR, BUNDLED_NAME
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: not a directory (expected a CLIP checkpoint or a prune/build directory)")
        if (path / "pruned" / "config.json").is_file():
            path = path / "pruned"
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a CLIP checkpoint (no config.json)")
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path / 'config.json'}: unreadable ({e})") from None
        if config.get("model_type") != "clip":
            raise UserError(f"{path}: not a CLIP checkpoint (model_type={config.get('model_type')!r})")
        return path, str(path)
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_local:
        raise UserError(f"{text}: model path does not exist")
    return text, text


def load(source: str | Path | None = None) -> Adapter:
    """Load a CLIP-style checkpoint as an Adapter.

    Args:
        source: a Hugging Face hub id (`openai/clip-vit-base-patch32`), a local
            checkpoint directory, a `mfdeploy prune`/`build` output directory,
            or None for the bundled reference model.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    from mfdeploy.models.clip import CLIPAdapter

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    where, model_id = resolve_checkpoint(source)
    try:
        if isinstance(where, Path) and (where / STRUCTURE_FILE).is_file():
            from mfdeploy.models.structure import load_structured

            model = load_structured(where)
        else:
            model = CLIPModel.from_pretrained(where)
        tokenizer = AutoTokenizer.from_pretrained(where)
        processor = AutoImageProcessor.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {source!s}: {first_line(e)}") from None
    if isinstance(where, Path) and (where / ORIGIN_FILE).is_file():
        model_id = json.loads((where / ORIGIN_FILE).read_text()).get("model_id", model_id)
    model.config._name_or_path = model_id
    return CLIPAdapter(model, tokenizer, processor, source=str(where))
