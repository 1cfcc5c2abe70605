"""The bundled pretrained reference models (normal Hugging Face model directories).

`mfdeploy/clip-shapes` (a `CLIPModel`, the default) and `mfdeploy/siglip-shapes`
(a `SiglipModel`), both trained on the shapes world by `mfdeploy.zoo.train`.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent
BUNDLED_NAME = "mfdeploy/clip-shapes"  # the default model
BUNDLED_DIR = _HERE / "clip-shapes"
# every bundled model by its name, and the short names a user may type for it
BUNDLED = {"mfdeploy/clip-shapes": BUNDLED_DIR, "mfdeploy/siglip-shapes": _HERE / "siglip-shapes"}
ALIASES = {"bundled": "mfdeploy/clip-shapes", "clip-shapes": "mfdeploy/clip-shapes",
           "siglip-shapes": "mfdeploy/siglip-shapes"}

__all__ = ["ALIASES", "BUNDLED", "BUNDLED_DIR", "BUNDLED_NAME", "bundled_name", "is_bundled"]


def bundled_name(model_id: str | Path | None) -> str | None:
    """The bundled model's name that `model_id` means (by name, short name or path), or None.

    None stands for the default bundled model.
    """
    if model_id is None:
        return BUNDLED_NAME
    text = str(model_id)
    if text in BUNDLED:
        return text
    if text in ALIASES:
        return ALIASES[text]
    try:
        real = Path(text).resolve()
    except OSError:
        return None
    return next((name for name, where in BUNDLED.items() if real == where.resolve()), None)


def is_bundled(model_id: str | Path | None) -> bool:
    """True for a bundled model, by name, by path, or by the model id recorded in a checkpoint."""
    return bundled_name(model_id) is not None
