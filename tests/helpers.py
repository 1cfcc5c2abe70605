"""Helpers shared by several test files (plain functions and classes; shared fixtures are in conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mfdeploy.runtime.base import Runner


def run_cli(argv: list[str]) -> int:
    """`mfdeploy ARGV` in this process; its exit code (0 when it returns)."""
    from mfdeploy.cli import main

    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def one_error(capsys) -> str:
    """The one line a failed command wrote to stderr (stage lines, which start with "[", left out); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1, err
    return lines[0]


def colour_pairs(data: Path) -> Path:
    """Four one-colour 32x32 pictures in a folder per colour (an image-folder dataset) and `pairs.jsonl` captioning
    them, under `data`; returns `data`."""
    import json

    from PIL import Image

    lines = []
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        (data / colour).mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(data / colour / f"{i}.png")
        lines.append(json.dumps({"image": f"{colour}/{i}.png", "caption": f"a {colour} square"}))
    (data / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return data


CAPTIONS = ["a red circle", "two small blue squares to the left of a green triangle", "a square"]


def export_onnx(adapter, out: Path) -> Path:
    """Both towers to `out/` with mfdeploy's exporter."""
    from mfdeploy.exporting import export_towers

    export_towers(adapter, out)
    return out


def make_build(root: Path, dense_dir: Path, onnx_dense: bool = True) -> Path:
    """A fake `mfdeploy build` directory: build.json, pruned/ (half the MLP weights zeroed), onnx/, onnx_dense/."""
    from mfdeploy.models import load

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(dense_dir, root / "pruned")
    pruned = load(root / "pruned")
    with torch.no_grad():
        for name, layer in pruned.prunable_layers().items():
            if name.endswith(("fc1", "fc2")):
                layer.module.weight[:, ::2] = 0  # half of every row, along in_features
    pruned.model.save_pretrained(root / "pruned")
    export_onnx(load(root / "pruned"), root / "onnx")
    if onnx_dense:
        export_onnx(load(dense_dir), root / "onnx_dense")
    manifest = {"model": str(dense_dir), "method": "magnitude", "ratio": 0.5, "pattern": None,
                "artifacts": {"pruned": "pruned", "onnx": "onnx"}}
    (root / "build.json").write_text(json.dumps(manifest))
    return root


def sparsify_2to4(adapter) -> None:
    """Zero the 2 smallest of every 4 consecutive input weights of each prunable Linear, in place."""
    with torch.no_grad():
        for layer in adapter.prunable_layers().values():
            w = layer.module.weight  # [out, in]
            groups = w.abs().reshape(w.shape[0], -1, 4)  # [out, in/4, 4]
            drop = groups.argsort(dim=-1)[..., :2]
            keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
            w.mul_(keep.reshape_as(w))


class FakeEngine:
    """Answers the ICudaEngine calls `engine_io` makes, from the ONNX file and the profile it was built with."""

    def __init__(self, onnx_path: str, profile):
        import onnx

        graph = onnx.load(onnx_path, load_external_data=False).graph
        self.onnx_path = onnx_path
        self.inputs = [i.name for i in graph.input]
        self.names = self.inputs + [o.name for o in graph.output]
        self.profile = profile
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.inputs else "OUTPUT"

    def get_tensor_dtype(self, name):
        return "DataType.INT64" if name in ("input_ids", "attention_mask") else "DataType.FLOAT"

    def get_tensor_shape(self, name):
        return [-1, 3, 32, 32] if name == "pixel_values" else [-1, -1] if name in self.inputs else [-1, 16]

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        s = self.profile[name]
        return [s.min, s.opt, s.max]


class EchoRunner(Runner):
    """A runner that hands its inputs back: for tests of what surrounds the inference (timing, reports)."""

    name = "echo"

    def embed_images(self, pixel_values):
        return pixel_values

    def embed_texts(self, input_ids, attention_mask):
        return input_ids


def mope_prune(path, monkeypatch, fast: bool = True, screen: bool | None = False, **kw):
    """Prune the model at `path` with MoPE (a small calibration); returns its record and pruned state dict.

    `fast` False: full forwards per module, the reference; `screen` sets `mope.SCREEN` (False: the replay alone,
    whose errors are the reference's bit for bit).
    """
    from mfdeploy.models import load
    from mfdeploy.pruning import PruneConfig, prune_model
    from mfdeploy.pruning.methods import mope

    monkeypatch.setattr(mope, "FAST_SCORING", fast)
    monkeypatch.setattr(mope, "SCREEN", screen)
    options = dict(ratio=0.5, model=str(path), method="mope", calib="shapes", calib_samples=16, batch_size=8,
                   mope_neuron_group=16, mope_depth_share=0.5, show_progress=False)
    adapter = load(path)
    record = prune_model(adapter, PruneConfig(**{**options, **kw}))
    return record, adapter.model.state_dict()
