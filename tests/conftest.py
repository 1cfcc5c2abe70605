"""Shared fixtures: tiny randomly initialised CLIP checkpoints saved with save_pretrained."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import FakeEngine
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from mfdeploy import platform
from mfdeploy.data import world
from mfdeploy.zoo.tokenizer import build_tokenizer


def save_tiny_clip(out: Path, seed: int = 0, width: int = 32, layers: int = 2, heads: int = 2,
                   image_size: int = 32, max_text_len: int = 48) -> Path:
    """A tiny CLIPModel with the shapes tokenizer and a CLIP image processor, saved as a HF directory."""
    tok = build_tokenizer(world.vocabulary(), max_text_len)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         max_position_embeddings=max_text_len, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """Path of a tiny random CLIP checkpoint (2 layers per tower, width 32, 32x32 images)."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_clip_other_dir(tmp_path_factory) -> Path:
    """A second tiny checkpoint with a different architecture (3 layers, width 48)."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip_other"), seed=1, width=48, layers=3)


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    """A tiny random SigLIP checkpoint (SiglipModel, 2 layers per tower, width 32, 32x32 images, 32 tokens)."""
    from siglip_models import save_tiny_siglip

    return save_tiny_siglip(tmp_path_factory.mktemp("tiny_siglip"))


@pytest.fixture(scope="session")
def tiny_siglip2_dir(tmp_path_factory) -> Path:
    """A tiny random fixed-resolution SigLIP 2 checkpoint (SiglipModel with a Siglip2Tokenizer)."""
    from siglip_models import save_tiny_siglip

    return save_tiny_siglip(tmp_path_factory.mktemp("tiny_siglip2"), variant="siglip2", seed=1)


@pytest.fixture(scope="session")
def tiny_build(tiny_clip_dir, tmp_path_factory) -> Path:
    """A real tiny build (magnitude 0.5, no --int8, 8 calibration pairs), shared: tests that change one copy it."""
    from mfdeploy.cli import main

    out = tmp_path_factory.mktemp("tiny_build") / "build"
    main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--ratio", "0.5", "--calib", "shapes",
          "--calib-samples", "8", "--out", str(out)])
    return out


@pytest.fixture()
def nonsense_int8(monkeypatch):
    """ONNX Runtime's quantizer made to write towers that compute nonsense (every INT8 weight 127): what the
    parity gates must refuse."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from mfdeploy.quantize import ort as qort

    real = qort.quantize_ort

    def broken(src, dst, *args, **kwargs):
        record = real(src, dst, *args, **kwargs)
        model = onnx.load(str(dst))
        for t in model.graph.initializer:
            if t.data_type == onnx.TensorProto.INT8:
                arr = numpy_helper.to_array(t)
                t.CopyFrom(numpy_helper.from_array(np.full(arr.shape, 127, np.int8), t.name))
        onnx.save(model, str(dst))
        return record

    monkeypatch.setattr(qort, "quantize_ort", broken)


@pytest.fixture()
def tiny_adapter(tiny_clip_dir):
    from mfdeploy.models import load

    return load(tiny_clip_dir)


@pytest.fixture(scope="session")
def shapes_pairs_jsonl(tmp_path_factory) -> Path:
    """A JSONL file of 12 image-caption pairs from the shapes world (eval seed range)."""
    import json

    root = tmp_path_factory.mktemp("pairs")
    lines = []
    for i, seed in enumerate(world.split_seeds("eval", 12)):
        scene = world.make_scene(seed)
        scene.render().save(root / f"img{i}.png")
        lines.append(json.dumps({"image": f"img{i}.png", "caption": scene.caption()}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root / "pairs.jsonl"


class RecordingReporter:
    """A progress `Reporter` that remembers each task as `description -> [total, done]`."""

    def __init__(self) -> None:
        self.tasks: dict[str, list[int]] = {}

    def task(self, description: str, total: int | None = None):
        self.tasks[description] = [total or 0, 0]

        def advance(n: int = 1) -> None:
            self.tasks[description][1] += n

        return advance


@pytest.fixture()
def recording_reporter() -> RecordingReporter:
    """A reporter to pass to `prune_model(..., reporter=)`; its `tasks` say what was reported."""
    return RecordingReporter()


def export_with_cli(tmp_path_factory, model_dir: Path, name: str) -> Path:
    """`mfdeploy export MODEL_DIR --out <tmp>/onnx` (export + parity + export.json); returns the onnx folder."""
    from mfdeploy.cli import main

    out = tmp_path_factory.mktemp(name) / "onnx"
    main(["export", str(model_dir), "--out", str(out)])
    return out


# ---- TensorRT without TensorRT: a recording fake of polygraphy.backend.trt and tensorrt -----------------------------

def _engine_status():
    from mfdeploy.exporting import engine_status

    return engine_status()


NO_ENGINES = _engine_status()
needs_no_engines = pytest.mark.skipif(NO_ENGINES["status"] == "available", reason="TensorRT and a GPU are present")


@pytest.fixture()
def fake_trt(monkeypatch):
    """Replace polygraphy's TensorRT loaders with recorders; TrtRunner becomes ONNX Runtime on the same file."""
    import polygraphy.backend.trt as ptrt
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.logger import G_LOGGER

    real = {name: getattr(ptrt, name) for name in ("CreateConfig", "network_from_onnx_path", "engine_from_network",
                                                   "save_engine", "TrtRunner")}
    calls: dict[str, list] = {"config": [], "network": [], "build": [], "save": [], "real": real}

    class FakeConfig:
        def __init__(self, **kwargs):
            calls["config"].append(kwargs)
            self.kwargs = kwargs

    def network_from_onnx_path(path, **kwargs):
        calls["network"].append((path, kwargs))
        return ("builder", "network", "parser", path)

    def engine_from_network(network, config=None, save_timing_cache=None):
        calls["build"].append({"network": network, "config": config, "save_timing_cache": save_timing_cache})
        onnx_path = network[3]
        # What polygraphy's TensorRT logger does with the builder's INFO and VERBOSE messages.
        G_LOGGER.verbose(f"(Sparsity) Layers eligible for sparse math: {Path(onnx_path).stem}/fc1/MatMul, "
                         f"{Path(onnx_path).stem}/fc2/MatMul")
        G_LOGGER.extra_verbose("(Sparsity) TRT inference plan picked sparse implementation for layers: "
                               f"{Path(onnx_path).stem}/fc1/MatMul")
        return FakeEngine(onnx_path, config.kwargs["profiles"][0])

    def save_engine(engine, path):
        calls["save"].append((engine, path))
        Path(path).write_bytes(b"fake plan for " + engine.onnx_path.encode())
        return engine

    def trt_runner(engine, name=None):
        return OnnxrtRunner(SessionFromOnnx(engine.onnx_path, providers=["CPUExecutionProvider"]), name=name)

    for name, fake in (("CreateConfig", FakeConfig), ("network_from_onnx_path", network_from_onnx_path),
                       ("engine_from_network", engine_from_network), ("save_engine", save_engine),
                       ("TrtRunner", trt_runner)):
        monkeypatch.setattr(ptrt, name, fake)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0.35"
    trt.Builder = object
    trt.Runtime = object
    trt.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(platform, "cuda_device_count", lambda: (1, ""))  # the one probe every part asks
    return calls
