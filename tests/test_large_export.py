"""A tower over protobuf's 2 GiB limit (issue 16): seven wide layers (MLP 16x the width) and 32x32 images.

The exporter must choose external data by itself, stream the weights (no
second copy of the tower in memory), pass its parity gate, and every reader
after it must load the graph with its data file: the ONNX Runtime runner and
INT8 quantization.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import save_tiny_clip
from helpers import run_cli
from transformers import CLIPConfig, CLIPModel

from mfdeploy.exporting.external import external_data_files, model_bytes
from mfdeploy.exporting.onnx_export import PROTO_LIMIT

pytestmark = pytest.mark.slow
# 7 layers x (85M weights: MLP 2 x 1536 x 24576, attention 4 x 1536^2) x 4 bytes = 2.38 GB > 2 GiB. Wider and
# fewer layers would do for the exporter, but ONNX Runtime's quantizer loops over output channels in Python.
WIDTH, MLP, LAYERS = 1536, 24576, 7


@pytest.fixture(scope="module")
def wide_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    small = save_tiny_clip(root / "small")  # the tokenizer, processor and text tower come from here
    config = json.loads((small / "config.json").read_text())
    config["vision_config"].update(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
                                   num_attention_heads=12, image_size=32, patch_size=16)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():  # small random weights: about 3 s instead of the default init's 20 s
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if p.dim() > 1 or name.endswith("class_embedding"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:  # LayerNorm weights 1, biases 0
                p.fill_(1.0 if name.endswith("norm.weight") or "layer_norm" in name and name.endswith("weight")
                        else 0.0)
        for name, b in model.named_buffers():
            if name.endswith("position_ids"):
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
    vision_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if n.startswith("vision"))
    assert vision_bytes > PROTO_LIMIT
    model.save_pretrained(small)  # the same folder: its tokenizer and processor stay
    del model
    out = root / "onnx"
    assert run_cli(["export", str(small), "--out", str(out)]) == 0
    return out, vision_bytes


def test_exporter_picks_external_data_and_passes_parity(wide_export):
    out, vision_bytes = wide_export
    record = json.loads((out / "export.json").read_text())
    vision = record["towers"]["vision"]
    assert vision["external_data"] and vision["writer"] == "streamed"
    assert external_data_files(out / "vision.onnx") == [out / "vision.onnx.data"]
    assert (out / "vision.onnx").stat().st_size < 1024 * 1024  # the graph alone
    assert model_bytes(out / "vision.onnx") > 0.99 * vision_bytes  # equal initializers (zero biases) are shared
    assert "vision.onnx.data" in record["files"]
    assert not record["towers"]["text"]["external_data"]  # the small tower stays one file
    assert record["parity"]["vision"]["passed"] and record["parity"]["vision"]["min_cosine"] >= 0.9999


def test_onnx_runtime_runner_loads_it(wide_export):
    from mfdeploy.runtime.ort_runner import OrtRunner

    out, _ = wide_export
    emb = OrtRunner(out, threads=2).embed_images(np.random.default_rng(0).standard_normal((2, 3, 32, 32),
                                                                                       dtype=np.float32))
    assert emb.shape == (2, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_quantize_reads_it(wide_export, tmp_path):
    out, _ = wide_export
    q = tmp_path / "q"
    assert run_cli(["quantize", str(out), "--out", str(q), "--calib", "shapes", "--calib-samples", "8"]) == 0
    record = json.loads((q / "quantize.json").read_text())
    assert record["parity"]["passed"]
    vision = record["towers"]["vision"]
    assert vision["fp32_bytes"] == model_bytes(out / "vision.onnx")
    assert vision["bytes"] < 0.4 * vision["fp32_bytes"]  # int8 weights
