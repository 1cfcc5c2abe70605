"""Score x budget: every unstructured score with every layer budget (and 2:4), their records and refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mfdeploy.cli import main
from mfdeploy.errors import UserError
from mfdeploy.models import load
from mfdeploy.pruning import BUDGETS, SCORES, PruneConfig, prune_model

ROLES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _prune(tiny_clip_dir, method, budget=None, pattern=None, ratio=0.5, seed=0):
    cfg = PruneConfig(ratio=ratio, model=str(tiny_clip_dir), method=method, budget=budget, pattern=pattern,
                      calib="shapes", calib_samples=8, batch_size=4, ecoflap_samples=4, seed=seed,
                      show_progress=False)
    adapter = load(tiny_clip_dir)
    return adapter, prune_model(adapter, cfg)


@pytest.fixture(scope="module")
def runs(tiny_clip_dir):
    """(score, budget, pattern) -> (adapter, record), each computed once for the module."""
    cache: dict = {}

    def get(score, budget, pattern=None, ratio=0.5):
        key = (score, budget, pattern, ratio)
        if key not in cache:
            cache[key] = _prune(tiny_clip_dir, score, budget, pattern, ratio)
        return cache[key]

    return get


CASES = [(s, b, None) for s in SCORES for b in BUDGETS] + [(s, None, "2:4") for s in SCORES]


@pytest.mark.parametrize("score,budget,pattern", CASES)
def test_every_score_with_every_budget(runs, tiny_clip_dir, score, budget, pattern):
    adapter, rec = runs(score, budget, pattern)
    layers = adapter.prunable_layers()
    masks = rec["_masks"]
    assert (rec["method"], rec["score"], rec["budget"]) == (score, score, budget)
    assert rec["pattern"] == (pattern or "unstructured")
    total, pruned = sum(m.numel() for m in masks.values()), sum(int((~m).sum()) for m in masks.values())
    if budget in ("uniform", "global", "modality"):  # exact counts (per layer for uniform: floor per layer)
        assert pruned == math.floor(0.5 * total)
    assert abs(pruned / total - 0.5) < 0.005
    for name, layer in layers.items():  # masks are folded: every pruned weight is zero
        w, m = layer.module.weight, masks[f"{name}.weight"]
        assert m.dtype == torch.bool and m.shape == w.shape and not bool(w[~m].any())
    per_layer = {n: v["sparsity"] for n, v in rec["sparsity"]["per_layer"].items()}
    if pattern:
        for m in masks.values():
            assert int(m.reshape(m.shape[0], -1, 4).sum(-1).max()) == 2
    elif budget == "uniform":
        assert all(abs(s - 0.5) < 1e-3 for s in per_layer.values())
    elif budget == "modality":
        assert all(abs(s - 0.5) < 1e-3 for s in rec["sparsity"]["per_modality"].values())
        # the budget is the score's choice no more: the same per-layer budgets under any score
        _, ref = runs("magnitude", "modality")
        assert per_layer == {n: v["sparsity"] for n, v in ref["sparsity"]["per_layer"].items()}
    elif budget == "ecoflap":
        blocks = rec["block_budgets"]
        assert all(abs(per_layer[n] - blocks[layers[n].block]) < 1e-3 for n in per_layer)
        # the zeroth-order block budgets do not depend on the local score: the same as --method ecoflap's
        assert blocks == runs("ecoflap", None)[1]["block_budgets"]
    if SCORES[score].compare == "row" and not pattern:  # Wanda stays row-wise at the layer's budget
        for name in layers:
            m = masks[f"{name}.weight"]
            lost = (~m).sum(1)
            assert int(lost.max() - lost.min()) <= 1, name


def test_method_defaults_and_overrides(runs):
    assert runs("multiflow", None)[1]["budget"] == "modality"
    assert runs("ecoflap", None)[1]["score"] == "wanda" and runs("ecoflap", None)[1]["budget"] == "ecoflap"
    for method in ("random", "magnitude", "wanda"):
        assert runs(method, None)[1]["budget"] == "uniform"
    default = runs("multiflow", None)[1]["_masks"]
    same = runs("multiflow", "modality")[1]["_masks"]
    uniform = runs("multiflow", "uniform")[1]["_masks"]
    assert all(torch.equal(default[k], same[k]) for k in default)
    assert any(not torch.equal(default[k], uniform[k]) for k in default)


@pytest.mark.parametrize("score,budget", [("random", "uniform"), ("multiflow", "uniform"), ("magnitude", "ecoflap"),
                                          ("random", "ecoflap"), ("wanda", "modality")])
def test_same_seed_same_masks(runs, tiny_clip_dir, score, budget):
    first = runs(score, budget)[1]["_masks"]
    _, again = _prune(tiny_clip_dir, score, budget)
    assert all(torch.equal(first[k], again["_masks"][k]) for k in first)
    if score == "random":
        _, other = _prune(tiny_clip_dir, score, budget, seed=1)
        assert any(not torch.equal(first[k], other["_masks"][k]) for k in first)


def test_budget_by_role_counts_pruned_weights(runs):
    adapter, rec = runs("multiflow", None, None, 0.75)
    layers = adapter.prunable_layers()
    by_role = rec["budget_by_role"]
    assert set(by_role) == {"vision", "text"}
    for modality, roles in by_role.items():
        assert list(roles) == list(ROLES)
        for role, value in roles.items():
            names = [n for n, l in layers.items() if l.modality == modality and n.endswith("." + role)]
            zeros = sum(int((~rec["_masks"][f"{n}.weight"]).sum()) for n in names)
            total = sum(layers[n].module.weight.numel() for n in names)
            assert value == zeros / total
    # the modality budget is not uniform over roles (that is the point of recording it)
    assert max(by_role["vision"].values()) - min(by_role["vision"].values()) > 0.01


@pytest.mark.parametrize("args,message", [
    (["--budget", "uniform", "--pattern", "2:4"], "--budget does not apply with --pattern 2:4"),
    (["--budget", "uniform", "--method", "mope"], "--budget does not apply to --method mope"),
    (["--budget", "layer"], "--budget layer: choose one of uniform, global, modality, ecoflap"),
    (["--scope", "global"], "No such option"),
])
def test_budget_refusals(tiny_clip_dir, tmp_path, capsys, monkeypatch, args, message):
    import mfdeploy.pipelines.prune as run_mod

    def never(*_a, **_k):
        raise AssertionError("refused configurations must fail before any work")

    monkeypatch.setattr(run_mod, "load", never)
    out = tmp_path / "p"
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--calib", "shapes", "--out", str(out),
              *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err
    if "No such option" not in message:
        assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_api_refuses_budget_with_pattern(tiny_adapter):
    import mfdeploy

    with pytest.raises(UserError, match="^budget does not apply with pattern 2:4"):  # the API names its arguments
        mfdeploy.prune(tiny_adapter, ratio=0.5, method="magnitude", budget="global", pattern="2:4")


def test_cli_budget_records_score_and_budget(tiny_clip_dir, tmp_path):
    out = tmp_path / "p"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.6", "--method", "magnitude", "--budget", "modality",
          "--out", str(out)])
    rec = json.loads((out / "prune.json").read_text())
    assert (rec["method"], rec["score"], rec["budget"]) == ("magnitude", "magnitude", "modality")
    assert set(rec["budget_by_role"]["text"]) == set(ROLES)
    assert (out / "sparsity.png").stat().st_size > 0
