"""Model adapters: load a checkpoint, name its towers and prunable layers."""

from mfdeploy.models.base import MODALITIES, Adapter, PrunableLayer
from mfdeploy.models.loader import load, resolve_checkpoint

__all__ = ["MODALITIES", "Adapter", "PrunableLayer", "load", "resolve_checkpoint"]
