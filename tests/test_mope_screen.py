"""MoPE screening (mope_screen): oneDNN-screened errors, close calls scored again exactly, the reference's masks."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import save_tiny_clip
from helpers import mope_prune
from siglip_models import save_tiny_siglip

from mfdeploy.pruning.methods import mope_screen
from mfdeploy.pruning.methods.mope_screen import ULPS, Bounds, Distrust, top_k
from mfdeploy.runtime import onednn

needs_onednn = pytest.mark.skipif(onednn.op() is None, reason="this PyTorch build has no oneDNN linear")


def _reference(values: list[float], k: int) -> list[int]:
    """The code before screening: a stable descending sort of the errors as a float32 tensor."""
    return sorted(torch.tensor(values).argsort(descending=True, stable=True)[:k].tolist())


def test_top_k_equals_the_exact_stable_sort_whenever_screened_values_lie_within_their_interval():
    """Random layers, with ties and near-ties at the boundary: the screened choice is the exact one."""
    rng = random.Random(0)
    asked = 0
    for case in range(400):
        bounds = Bounds(2.0)
        n = rng.randint(1, 30)
        k = rng.randint(1, n)
        # quantised to a few ulps of the loss so that exact ties and near-ties are frequent
        step = bounds.margin(0.0) / ULPS * rng.choice([1, 8, 64, 512])
        exact = [step * rng.randint(-20, 20) for _ in range(n)]
        if case % 4 == 0:  # values closer than a float32 ulp: one float32 to the reference, ties go by index
            exact = [1.0 + 2.0 ** -40 * rng.randint(0, 3) + e * 2 ** 20 for e in exact]
        screened_values = [e + rng.uniform(-0.5, 0.5) * bounds.margin(e) for e in exact]
        calls: list[int] = []

        def score(indices, exact=exact, calls=calls):
            calls.extend(indices)
            return [exact[j] for j in indices]

        values, screened = list(screened_values), set(range(n))
        kept = top_k(values, screened, k, bounds, score)
        assert kept == _reference(exact, k), case
        assert len(calls) == len(set(calls))  # no module scored twice
        assert all(values[j] == exact[j] for j in calls) and not screened & set(calls)
        asked += len(calls)
    assert 0 < asked < 400 * 15  # close calls happen, and are a minority


def test_top_k_asks_only_for_close_calls_and_none_when_all_exact():
    bounds = Bounds(1.0)
    m = bounds.margin(0.0)
    values = [5.0, 4.0, 1.0 + m / 2, 1.0, -3.0]  # k = 3: the boundary falls between two values m/2 apart
    asked = []
    kept = top_k(list(values), set(range(5)), 3, bounds, lambda idx: asked.extend(idx) or [values[j] for j in idx])
    assert kept == [0, 1, 2] and sorted(asked) == [2, 3]
    assert top_k([1.0, 1.0, 1.0], set(), 2, bounds, lambda idx: pytest.fail("nothing is screened")) == [0, 1]


def test_intervals_widen_with_the_differences_seen_and_a_far_value_is_distrusted():
    bounds = Bounds(1.0)
    floor = bounds.margin(0.0)
    bounds.observe(1.0, 1.0 + floor / 4)  # within half the interval: remembered
    assert bounds.seen == pytest.approx(floor / 4) and bounds.margin(0.0) == pytest.approx(2 * floor)  # SPREAD 8
    with pytest.raises(Distrust, match="from its exact value"):
        bounds.observe(1.0, 1.0 + 1.01 * floor)  # beyond half of the (widened) interval
    with pytest.raises(Distrust, match="from its exact value"):
        top_k([1.0, 1.0], {0, 1}, 1, Bounds(1.0), lambda idx: [1.0 + 4 * floor] * len(idx))
    with pytest.raises(Distrust, match="not a finite number"):
        top_k([1.0, float("nan")], {0, 1}, 1, Bounds(1.0), lambda idx: pytest.fail("decided before scoring"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mope_screen")
    return {"clip": save_tiny_clip(root / "clip", layers=3), "siglip": save_tiny_siglip(root / "siglip", layers=3)}


def _prune(path, monkeypatch, fast=True, screen=True, **kw):
    return mope_prune(path, monkeypatch, fast, screen, **kw)


def _same_masks(ref, ref_state, got, got_state):
    """The same modules kept; screened values within their tower's interval, the others the reference's exactly."""
    assert got["structure"] == ref["structure"] and got["mope_depth"] == ref["mope_depth"]
    assert got_state.keys() == ref_state.keys() and all(torch.equal(ref_state[k], got_state[k]) for k in ref_state)
    for layer, want in ref["mope_width"].items():
        have = got["mope_width"][layer]
        assert have["kept_heads"] == want["kept_heads"]
        for part in ("heads", "neuron_groups"):
            screened = set(have.get("screened", {}).get(part, []))
            bounds = Bounds(ref["dense_loss"])
            bounds.seen = got.get("z_screen", {}).get(layer.split(".")[0], {}).get("largest_difference", 0.0)
            for j, (e, f) in enumerate(zip(want[part], have[part])):
                if j in screened:  # a screened value: within the interval it stood for
                    assert abs(e - f) <= bounds.margin(e), (layer, part, j)
                else:  # scored exactly: the reference's value, bit for bit
                    assert e == f, (layer, part, j)


@needs_onednn
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_screened_pruning_keeps_the_references_modules(models, monkeypatch, family):
    ref, ref_state = _prune(models[family], monkeypatch, fast=False, screen=False)
    got, got_state = _prune(models[family], monkeypatch)
    _same_masks(ref, ref_state, got, got_state)
    assert "z_screen" not in ref or all(s["screened"] == 0 for s in ref["z_screen"].values())
    for tower, screen in got["z_screen"].items():
        assert screen["screened"] == 3 * (2 + 8) and screen["stopped"] is None, tower  # 3 layers, 2 heads, 8 groups


@needs_onednn
def test_every_module_a_close_call_is_every_module_scored_exactly(models, monkeypatch):
    """An interval wider than every gap: each error is scored again, and the record holds the exact values."""
    ref, ref_state = _prune(models["clip"], monkeypatch, fast=False, screen=False)
    monkeypatch.setattr(mope_screen, "ULPS", 2 ** 40)
    got, got_state = _prune(models["clip"], monkeypatch)
    _same_masks(ref, ref_state, got, got_state)
    for layer, have in got["mope_width"].items():  # screened values are left only where a layer keeps them all
        left = have.get("screened", {})
        assert set(left) <= {"heads"} and have["kept_heads"] == left.get("heads", have["kept_heads"]), layer
        assert have["neuron_groups"] == ref["mope_width"][layer]["neuron_groups"]  # scored again: exact values
    assert all(0 < s["rescored_exactly"] <= s["screened"] for s in got["z_screen"].values())


@needs_onednn
def test_a_faulty_fast_kernel_ends_screening_and_the_masks_stay_exact(models, monkeypatch):
    ref, ref_state = _prune(models["clip"], monkeypatch, fast=False, screen=False)
    real = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda x, w, b: real(x, w, b) * 1.001)
    got, got_state = _prune(models["clip"], monkeypatch)
    _same_masks(ref, ref_state, got, got_state)
    assert got["mope_width"] == ref["mope_width"]  # all exact: screening stopped before any value was used
    for tower, screen in got["z_screen"].items():
        assert screen["stopped"].startswith(f"{tower.replace('_model', '')} layer 0, the model's loss itself: a "
                                            "screened error was"), screen


@needs_onednn
def test_screened_cache_serves_another_ratio_exactly(models, monkeypatch, tmp_path):
    """Screened errors in the cache, read by a run at another ratio: its own close calls are scored there."""
    cache = tmp_path / "mope"
    _prune(models["clip"], monkeypatch, mope_cache=cache)
    stored = [json.loads(f.read_text()) for f in cache.glob("*.json")]
    assert any("screened" in s["errors"] for s in stored)
    ref, ref_state = _prune(models["clip"], monkeypatch, fast=False, screen=False, ratio=0.3)
    got, got_state = _prune(models["clip"], monkeypatch, mope_cache=cache, ratio=0.3)
    assert got["mope_cache"]["width_layers"]["from_cache"] >= 2
    _same_masks(ref, ref_state, got, got_state)


def test_cache_file_with_bad_screened_indices_is_scored_again(models, monkeypatch, tmp_path, caplog):
    cache = tmp_path / "mope"
    _prune(models["clip"], monkeypatch, screen=False, mope_cache=cache)
    path = sorted(cache.glob("*.json"))[0]
    data = json.loads(path.read_text())
    data["errors"]["screened"] = {"heads": [0, 0]}
    path.write_text(json.dumps(data))
    again, _ = _prune(models["clip"], monkeypatch, screen=False, mope_cache=cache)
    assert f"ignoring MoPE cache file {path}" in caplog.text
    assert again["mope_cache"]["width_layers"]["scored"] + again["mope_cache"]["depth_towers"]["scored"] == 1
