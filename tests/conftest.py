"""Shared fixtures: tiny randomly initialised CLIP checkpoints saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

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
