"""MoPE scoring by replay (mope_replay) is bit-identical to full forwards, for CLIP and SigLIP; the score cache."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager

import pytest
import torch
from conftest import save_tiny_clip
from helpers import mope_prune
from siglip_models import save_tiny_siglip

from mfdeploy.errors import WriteError
from mfdeploy.models import load
from mfdeploy.models import structure as st
from mfdeploy.models.inputs import CalibSource, pair_batches
from mfdeploy.pruning.methods import mope
from mfdeploy.pruning.methods.mope_cache import ScoreCache
from mfdeploy.pruning.methods.mope_replay import Z, error_without

FAMILIES = ["clip", "siglip"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three layers per tower, so the replay short-circuits more than one layer."""
    root = tmp_path_factory.mktemp("mope_fast")
    return {"clip": save_tiny_clip(root / "clip", layers=3), "siglip": save_tiny_siglip(root / "siglip", layers=3),
            "clip_other": save_tiny_clip(root / "clip_other", seed=5, layers=3)}


def _prune(path, monkeypatch, fast=True, screen=False, **kw):
    return mope_prune(path, monkeypatch, fast, screen, **kw)


def _same_result(a, b):
    assert a["mope_width"] == b["mope_width"]  # every error, exactly (floats compare by value)
    assert a["mope_depth"] == b["mope_depth"]
    assert a["structure"] == b["structure"] and a["dense_loss"] == b["dense_loss"]


@pytest.mark.parametrize("family", FAMILIES)
def test_replayed_scores_are_bit_identical(models, monkeypatch, family):
    ref, ref_state = _prune(models[family], monkeypatch, fast=False)
    fast, fast_state = _prune(models[family], monkeypatch, fast=True)
    assert ref["z_replay"] == {"vision_model": False, "text_model": False}
    assert fast["z_replay"] == {"vision_model": True, "text_model": True}  # no fallback to full forwards
    _same_result(ref, fast)
    assert any(len(ref["structure"][t]["kept_layers"]) < 3 for t in st.TOWER_ATTRS)  # depth really cut
    assert ref_state.keys() == fast_state.keys()
    assert all(torch.equal(ref_state[k], fast_state[k]) for k in ref_state)


def test_a_layer_the_replay_cannot_reproduce_is_scored_by_full_forwards(models, monkeypatch):
    """An MLP doing more after fc2 (here a harmless `+ 0.0`) fails the replay's check: full forwards, same errors."""
    from transformers.models.clip import modeling_clip

    def forward(self, hidden_states):
        return self.fc2(self.activation_fn(self.fc1(hidden_states))) + 0.0

    monkeypatch.setattr(modeling_clip.CLIPMLP, "forward", forward)
    ref, _ = _prune(models["clip"], monkeypatch, fast=False)
    fast, _ = _prune(models["clip"], monkeypatch, fast=True)
    assert fast["z_replay"] == {"vision_model": False, "text_model": False}
    _same_result(ref, fast)


@contextmanager
def _zeroed(tensors):
    saved = [(p, idx, p[idx].clone()) for p, idx in tensors]
    for p, idx, _ in saved:
        p.data[idx] = 0
    try:
        yield
    finally:
        for p, idx, value in saved:
            p.data[idx] = value


@pytest.mark.parametrize("family", FAMILIES)
def test_replayed_embeddings_equal_full_forwards(models, family):
    """Per module removed, the tower's embeddings themselves are the same tensors, bit for bit."""
    adapter = load(models[family])
    batches = list(pair_batches(adapter, CalibSource("shapes"), 12, 4))
    z = Z(adapter, batches)
    for tower in st.TOWER_ATTRS:
        modality = "vision" if tower == "vision_model" else "text"
        replay = z.replay(tower)
        for i, layer in enumerate(st.encoder_layers(adapter.model, tower)):
            attn, mlp, hd = layer.self_attn, layer.mlp, st.head_dim(layer.self_attn)
            removals = {"heads": [(attn.out_proj.weight, (slice(None), slice(hd, 2 * hd)))],
                        "neurons": [(mlp.fc2.weight, (slice(None), slice(16, 32)))],
                        "layer": [(p, slice(None)) for p in (attn.out_proj.weight, attn.out_proj.bias,
                                                             mlp.fc2.weight, mlp.fc2.bias)]}
            for part, tensors in removals.items():
                with torch.inference_mode(), _zeroed(tensors):
                    full = [z.embed(modality, k) for k in range(len(batches))]
                with replay.scoring(i, part) as r, torch.inference_mode(), _zeroed(tensors):
                    assert r is replay
                    replayed = []
                    for k in range(len(batches)):
                        replay.batch = k
                        replayed.append(z.embed(modality, k))
                assert all(torch.equal(a, b) for a, b in zip(full, replayed)), (tower, i, part)
                assert "forward" not in layer.self_attn.__dict__ and "forward" not in layer.__dict__  # restored
            # the removals above left the model as it was: the loss too, through the replay
            with replay.scoring(i, "heads") as r:
                assert error_without(z, modality, [], r) == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_reuses_every_layer(models, monkeypatch, tmp_path, family):
    cache = tmp_path / "mope"
    first, _ = _prune(models[family], monkeypatch, mope_cache=cache)
    assert first["mope_cache"] == {"dir": str(cache), "width_layers": {"from_cache": 0, "scored": 6},
                                   "depth_towers": {"from_cache": 0, "scored": 2}}
    assert len(list(cache.glob("*.json"))) == 8

    def never(*a, **k):
        raise AssertionError("a cached layer was scored again")

    monkeypatch.setattr(mope, "width_errors", never)
    monkeypatch.setattr(mope, "_depth_errors", never)
    again, _ = _prune(models[family], monkeypatch, mope_cache=cache)
    assert again["mope_cache"]["width_layers"] == {"from_cache": 6, "scored": 0}
    assert again["mope_cache"]["depth_towers"] == {"from_cache": 2, "scored": 0}
    _same_result(first, again)


def test_cache_misses_other_pairs_or_model(models, monkeypatch, tmp_path):
    cache = tmp_path / "mope"
    _prune(models["clip"], monkeypatch, mope_cache=cache)
    other_pairs, _ = _prune(models["clip"], monkeypatch, mope_cache=cache, calib_samples=12)
    assert other_pairs["mope_cache"]["width_layers"] == {"from_cache": 0, "scored": 6}
    other_batches, _ = _prune(models["clip"], monkeypatch, mope_cache=cache, batch_size=4)  # same pairs, split apart
    assert other_batches["mope_cache"]["width_layers"] == {"from_cache": 0, "scored": 6}
    other_model, _ = _prune(models["clip_other"], monkeypatch, mope_cache=cache)
    assert other_model["mope_cache"]["width_layers"] == {"from_cache": 0, "scored": 6}
    # another ratio: the first layer of each tower has no earlier cut, so its errors are reused
    other_ratio, _ = _prune(models["clip"], monkeypatch, mope_cache=cache, ratio=0.3, mope_depth_share=0.0)
    assert other_ratio["mope_cache"]["width_layers"]["from_cache"] >= 2


def test_cache_resumes_a_killed_run_and_rescores_a_corrupt_file(models, monkeypatch, tmp_path, caplog):
    cache = tmp_path / "mope"
    reference, _ = _prune(models["clip"], monkeypatch)
    scored = []
    real = mope.width_errors

    def dies_on_the_fourth(*a, **k):
        if len(scored) == 3:
            raise KeyboardInterrupt
        scored.append(1)
        return real(*a, **k)

    monkeypatch.setattr(mope, "width_errors", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        _prune(models["clip"], monkeypatch, mope_cache=cache)
    monkeypatch.setattr(mope, "width_errors", real)
    files = sorted(cache.iterdir())
    assert len(files) == 3 and all(f.suffix == ".json" for f in files)  # no temporary file left behind
    files[0].write_text('{"format": "mfdeploy MoPE module errors", "errors": {"heads": [0.1')  # cut short
    with caplog.at_level(logging.WARNING):
        resumed, _ = _prune(models["clip"], monkeypatch, mope_cache=cache)
    assert resumed["mope_cache"]["width_layers"] == {"from_cache": 2, "scored": 4}
    assert f"ignoring MoPE cache file {files[0]}" in caplog.text
    assert json.loads(files[0].read_text())["errors"]  # written again, whole
    _same_result(reference, resumed)


def test_cache_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriteError, match="cannot write"):
        ScoreCache(tmp_path / "file" / "mope")
