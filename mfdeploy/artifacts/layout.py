"""The artifact contract: every file and folder name mfdeploy writes or reads, and the towers' I/O specs.

This module is the only place that spells these names (`tests/test_architecture.py`
checks it), so a reader and a writer can never disagree on where a file is.

A build directory (`mfdeploy build --out`):

    build.json            the manifest, written last (`BUILD_MANIFEST`)
    prune.json            the prune record; masks.safetensors, pruned/ (checkpoint), sparsity.png
    onnx/                 pruned towers: vision.onnx, text.onnx, parity_inputs.npz
    onnx_dense/           dense towers (the bench and engine baseline)
    onnx_int8/ onnx_qdq/  quantized towers (`--int8`), each with quantize.json
    engines/ engines_dense/  TensorRT plans, logs, timing.cache, engine.json
    report.md, bench.json/.md/.png

A Triton Inference Server model repository (`mfdeploy triton BUILD --out REPO`):

    triton.json           the record (`TRITON_RECORD`): models, source files with sha256, max batch, versions
    README.md             how to start tritonserver on it and call it
    preprocessing/        the tokenizer and image processor files of the build's pruned/ checkpoint
    <model>/config.pbtxt  one model per tower and format, e.g. clip_vision_onnx, clip_text_plan
    <model>/1/model.onnx  (a folder model.onnx/ holding model.onnx and its external data), or model.plan
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# --- manifests: a directory holding one of them is mfdeploy's ----------------------------------------------------
BUILD_MANIFEST = "build.json"
PRUNE_MANIFEST = "prune.json"
EXPORT_MANIFEST = "export.json"
QUANTIZE_MANIFEST = "quantize.json"
ENGINE_RECORD = "engine.json"
TRITON_RECORD = "triton.json"
MANIFESTS = (BUILD_MANIFEST, PRUNE_MANIFEST, EXPORT_MANIFEST, QUANTIZE_MANIFEST, ENGINE_RECORD, TRITON_RECORD)
# output directories that name the dense model they came from; build.json first: written last, it covers all
SOURCE_MANIFESTS = (BUILD_MANIFEST, PRUNE_MANIFEST)
FILE_LIST = ".mfdeploy-files"  # every output directory lists the files it was created with (--force)
TEMP_OWNER = ".mfdeploy-owner"  # in every temporary folder: who made it, so a killed run's folder can be told
META_PREFIX = "mfdeploy."  # the ONNX metadata_props keys the exporter writes (model sizes, family, pruning)

# --- files -------------------------------------------------------------------------------------------------------
MASKS_FILE = "masks.safetensors"
ORIGIN_FILE = "mfdeploy_origin.json"  # in a pruned checkpoint: which model it came from, and how
STRUCTURE_FILE = "mfdeploy_structure.json"  # in a structurally pruned checkpoint: the cut shapes
PARITY_INPUTS = "parity_inputs.npz"  # the real parity inputs, kept for engine checks (which have no tokenizer)
TIMING_CACHE = "timing.cache"
REPORT_FILE = "report.md"
SPARSITY_PLOT = "sparsity.png"
BENCH_STEM = "bench"
BENCH_SUFFIXES = (".json", ".md", ".png")
BENCH_JSON = "bench.json"

# --- folders of a build (and of a prune directory: pruned/) -----------------------------------------------------
PRUNED_DIR = "pruned"
ONNX_DIR = "onnx"
ONNX_DENSE_DIR = "onnx_dense"
ONNX_INT8_DIR = "onnx_int8"  # ONNX Runtime INT8 (CPU kernels)
ONNX_QDQ_DIR = "onnx_qdq"  # TensorRT explicit quantization
ENGINES_DIR = "engines"
ENGINES_DENSE_DIR = "engines_dense"
ORT_TRT_CACHE_DIR = "ort_trt_cache"
QUANTIZED_DIRS = {"ort": ONNX_INT8_DIR, "trt": ONNX_QDQ_DIR}  # quantize target -> a build's folder

# --- a Triton model repository --------------------------------------------------------------------------------
TRITON_CONFIG = "config.pbtxt"
TRITON_README = "README.md"
TRITON_PREPROCESSING_DIR = "preprocessing"
TRITON_VERSION_DIR = "1"  # the one model version written
# Triton's file name per format; its openvino backend reads the same ONNX file, named in the config
TRITON_MODEL_FILES = {"onnx": "model.onnx", "plan": "model.plan", "openvino": "model.onnx"}
# What a client needs to tokenize and preprocess like the model did, copied from a checkpoint when present:
# a fast tokenizer (tokenizer.json) or a slow one (vocab.json + merges.txt; SentencePiece: spiece.model for SigLIP,
# tokenizer.model for SigLIP 2's Gemma tokenizer), and the image processor.
PREPROCESSING_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                       "vocab.json", "merges.txt", "spiece.model", "tokenizer.model", "preprocessor_config.json")

# --- towers --------------------------------------------------------------------------------------------------------
# What each exported tower takes and returns, as data: drives the exporter (names, dynamic axes), the parity
# check, the engine builder (profiles, trtexec shapes) and the runners. Dimension entries are ints (fixed),
# names of model sizes resolved from the adapter (`image_size`, `embed_dim`), or names of dynamic axes
# (`batch`, `text_len`) that stay symbolic in the ONNX graph.
# The family of the model decides which of a tower's inputs it takes and which axes it fixes
# (`Adapter.tower_inputs`, `Adapter.fixed_text_len`): CLIP's text tower takes `input_ids` and `attention_mask`
# with a dynamic `text_len`; SigLIP's takes `input_ids` alone, `max_text_len` long (its model reads fixed-length
# text and no mask). The exporter records the choice in the ONNX metadata (`mfdeploy.family`,
# `mfdeploy.text_inputs`, `mfdeploy.text_padding`, `mfdeploy.scoring`) and in export.json (`model.family`, each
# tower's `inputs`); readers take a tower's inputs from its graph.
TOWERS: dict[str, dict[str, Any]] = {
    "vision": {
        "file": "vision.onnx",
        "engine": "vision.plan",
        "inputs": {"pixel_values": {"dtype": "float32", "shape": ["batch", 3, "image_size", "image_size"]}},
        "outputs": {"image_embeds": {"dtype": "float32", "shape": ["batch", "embed_dim"]}},
    },
    "text": {
        "file": "text.onnx",
        "engine": "text.plan",
        "inputs": {
            "input_ids": {"dtype": "int64", "shape": ["batch", "text_len"]},
            "attention_mask": {"dtype": "int64", "shape": ["batch", "text_len"]},
        },
        "outputs": {"text_embeds": {"dtype": "float32", "shape": ["batch", "embed_dim"]}},
    },
}
TOWER_NAMES = tuple(TOWERS)
ONNX_FILES = {tower: spec["file"] for tower, spec in TOWERS.items()}
ENGINE_FILES = {tower: spec["engine"] for tower, spec in TOWERS.items()}
INPUT_NAMES = {tower: tuple(spec["inputs"]) for tower, spec in TOWERS.items()}
OUTPUT_NAMES = {tower: next(iter(spec["outputs"])) for tower, spec in TOWERS.items()}


def trt_log(tower: str) -> str:
    """The TensorRT build log of a tower's engine, beside the plan."""
    return f"{tower}.trt.log"


# Files later commands add to an existing output directory or one of its folders (`mfdeploy bench` into a
# build, `mfdeploy engine` into an export directory): they are mfdeploy's too (fnmatch globs).
ADDED_LATER = (*(f"{BENCH_STEM}{s}" for s in BENCH_SUFFIXES), *(f"{BENCH_STEM}-*{s}" for s in BENCH_SUFFIXES),
               *ENGINE_FILES.values(), *(trt_log(t) for t in TOWERS), TIMING_CACHE, ENGINE_RECORD)


def has_towers(directory: Path) -> bool:
    """Whether `directory` holds both exported towers."""
    return all((Path(directory) / name).is_file() for name in ONNX_FILES.values())


INCOMPLETE = "an incomplete build: rerun `mfdeploy build`"  # how every command names a damaged build
INCOMPLETE_BUILD = f"({INCOMPLETE})"


def missing_onnx(build: Path) -> list[str]:
    """The exported tower files a build directory lacks, as `onnx/<file>` (every build exports both towers)."""
    return [f"{ONNX_DIR}/{name}" for name in ONNX_FILES.values() if not (Path(build) / ONNX_DIR / name).is_file()]


def is_build(directory: Path) -> bool:
    """Whether `directory` is a `mfdeploy build` output (it holds `build.json`)."""
    return (Path(directory) / BUILD_MANIFEST).is_file()
