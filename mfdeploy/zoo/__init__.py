"""The bundled pretrained reference model (a normal Hugging Face model directory)."""

from __future__ import annotations

from pathlib import Path

BUNDLED_NAME = "mfdeploy/clip-shapes"
BUNDLED_DIR = Path(__file__).parent / "clip-shapes"

__all__ = ["BUNDLED_DIR", "BUNDLED_NAME", "is_bundled"]


def is_bundled(model_id: str | Path | None) -> bool:
    """True for the bundled model, by name, by path, or by the model id recorded in a checkpoint."""
    if model_id is None:
        return True
    text = str(model_id)
    if text in (BUNDLED_NAME, "bundled", "clip-shapes"):
        return True
    try:
        return Path(text).resolve() == BUNDLED_DIR.resolve()
    except OSError:
        return False
