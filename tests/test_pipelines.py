"""The build as stages (issue 17): named stages in a list, each reading and writing artifacts, none relying
on a model another stage changed in place; the runtime's torch runner keeps the model's device and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfdeploy.artifacts.layout import ONNX_DENSE_DIR, ONNX_DIR, PRUNED_DIR
from mfdeploy.pipelines import build as pipeline
from mfdeploy.pruning import PruneConfig


def test_stages_are_data():
    names = [s.name for s in pipeline.STAGES]
    assert names == ["load", "evaluate dense", "export dense", "parity dense", "prune", "export", "parity",
                     "quantize", "engine", "engine dense", "evaluate pruned", "evaluate int8", "report"]
    cfg = pipeline.BuildConfig(prune=PruneConfig(ratio=0.5, model="some/model", method="magnitude"))
    planned = [s.name for s in pipeline.planned_stages(cfg)]  # no evaluation data, no --int8, no GPU here
    assert "quantize" not in planned and "evaluate dense" not in planned and planned[-1] == "report"


def _dense_fraction_zero(adapter) -> float:
    weights = [layer.module.weight for layer in adapter.prunable_layers().values()]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


def test_stage_order_is_not_load_bearing(tiny_clip_dir, tmp_path):
    """Prune first, then the dense stages: they still see the dense model, and pass the dense parity gate."""
    cfg = pipeline.BuildConfig(prune=PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method="magnitude",
                                                 show_progress=False), out=tmp_path / "unused")
    state = pipeline.BuildState(cfg, tmp_path, eval_data=None)
    state.records["prune"] = pipeline.prune(state)
    assert (tmp_path / PRUNED_DIR / "config.json").is_file()
    state.records["export dense"] = pipeline.export_dense(state)  # after pruning: the old build exported zeros
    parity = pipeline.parity_dense(state)
    assert parity["vision"]["passed"] and parity["text"]["passed"]
    assert _dense_fraction_zero(state.model("dense")) < 0.01
    assert _dense_fraction_zero(state.model("pruned")) == pytest.approx(0.5, abs=0.01)  # reloaded from pruned/
    pipeline.export_pruned(state)
    assert pipeline.parity_pruned(state)["inputs_file"]
    assert (tmp_path / ONNX_DIR / "vision.onnx").is_file() and (tmp_path / ONNX_DENSE_DIR / "text.onnx").is_file()


def test_torch_runner_keeps_the_models_dtype_and_device(tiny_adapter):
    """No hidden move to the CPU nor cast to float32: inputs follow the weights (float64 here)."""
    from mfdeploy.runtime import TorchRunner

    tiny_adapter.model.to(torch.float64)
    runner = TorchRunner(tiny_adapter)
    assert runner.device == "cpu" and next(tiny_adapter.model.parameters()).dtype == torch.float64
    size = tiny_adapter.image_size
    emb = runner.embed_images(np.zeros((2, 3, size, size), dtype=np.float32))
    ids, mask = tiny_adapter.tokenize(["a red circle", "a blue square"])
    txt = runner.embed_texts(ids.numpy(), mask.numpy())
    assert emb.dtype == np.float32 and emb.shape == txt.shape == (2, tiny_adapter.embed_dim)
    assert np.allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)


def test_engine_options_are_declared_once():
    """`engine` and `build` share one declaration of the TensorRT options: the same help text in both."""
    import typer.main

    from mfdeploy.cli import app

    commands = {c.name or c.callback.__name__: c for c in app.registered_commands}

    def helps(name: str) -> dict[str, str]:
        cmd = typer.main.get_command_from_info(commands[name], pretty_exceptions_short=True,
                                               rich_markup_mode=None)
        return {p.name: p.help for p in cmd.params}

    engine, build = helps("engine"), helps("build")
    for option in ("fp16", "sparse", "max_batch", "max_text_len"):
        assert engine[option] and engine[option] == build[option], option
