"""Calibration and evaluation data: JSONL pairs, image folders, the shapes world."""

from mfdeploy.data.batching import Batch, CalibSource, make_batch, pair_batches, parse_calib
from mfdeploy.data.pairs import FolderDataset, Pair, load_image_folder, load_pairs, open_image

__all__ = ["Batch", "CalibSource", "FolderDataset", "Pair", "load_image_folder", "load_pairs", "make_batch",
           "open_image", "pair_batches", "parse_calib"]
