"""Calibration and evaluation data: JSONL pairs, image folders, the shapes world (raw images and captions;
model inputs are `mfdeploy.models.inputs`)."""

from mfdeploy.data.batching import CalibSource, calibration_pairs, pairs_available, parse_calib, raw_pair_chunks
from mfdeploy.data.pairs import FolderDataset, Pair, load_image_folder, load_pairs, open_image

__all__ = ["CalibSource", "FolderDataset", "Pair", "calibration_pairs", "load_image_folder", "load_pairs",
           "open_image", "pairs_available", "parse_calib", "raw_pair_chunks"]
