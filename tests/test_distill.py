"""Recovery (issue 15): distillation for every method, with the masks held fixed and early stopping."""

import copy
import json

import pytest
import torch

from mfdeploy.cli import main
from mfdeploy.errors import UserError
from mfdeploy.models import load
from mfdeploy.models.family import PairScorer
from mfdeploy.models.inputs import CalibSource, pair_batches
from mfdeploy.pruning import PruneConfig, prune_model
from mfdeploy.pruning.distill import _embed, distill, loss_fn
from mfdeploy.pruning.masks import load_masks
from mfdeploy.pruning.registry import METHODS

STEPS = 4
LR = 1e-4  # Adam moves every trained weight by about this much per step


def _cfg(tiny_clip_dir, method="multiflow", **kw):
    base = {"ratio": 0.5, "model": str(tiny_clip_dir), "method": method, "calib": "shapes", "calib_samples": 16,
            "batch_size": 8, "show_progress": False, **({"mope_neuron_group": 32} if method == "mope" else {})}
    return PruneConfig(**{**base, **kw})


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_distils_and_masked_weights_stay_zero(tiny_clip_dir, method):
    pruned = load(tiny_clip_dir)
    plain = prune_model(pruned, _cfg(tiny_clip_dir, method))
    adapter = load(tiny_clip_dir)
    record = prune_model(adapter, _cfg(tiny_clip_dir, method, distill_steps=STEPS, distill_lr=LR))
    d = record["distill"]
    assert d["steps"] == STEPS and 1 <= d["steps_run"] <= STEPS and d["lr"] == LR
    assert d["held_out_pairs"] == 64 and d["train_pairs"] == 16 and "distill_s" in record["timings"]
    assert len(d["curve"]) >= 2 and all(p["held_out_loss"] > 0 for p in d["curve"])
    assert record["sparsity"] == plain["sparsity"]
    params = dict(adapter.model.named_parameters())
    before = dict(pruned.model.named_parameters())
    if method == "mope":  # structured: nothing masked, the cut shapes stay
        assert d["masks_held"] is False and "_masks" not in record
        assert all(params[n].shape == p.shape for n, p in before.items())
        return
    assert d["masks_held"] is True
    masks = record["_masks"]
    assert masks.keys() == plain["_masks"].keys()
    assert all(torch.equal(masks[n], plain["_masks"][n]) for n in masks)  # pruning's masks, untouched
    moved = 0
    for name, keep in masks.items():
        w = params[name].detach()
        assert torch.count_nonzero(w[~keep]) == 0, name  # exactly zero, not small
        moved += int(not torch.equal(w[keep], before[name].detach()[keep]))
    if d["restored_best"] and d["best_step"] == 0:
        pytest.skip("no step improved on the pruned model: nothing to compare")  # pragma: no cover
    assert moved == len(masks)  # every kept weight trained


def test_two_four_survives_distillation_and_export(tiny_clip_dir, tmp_path):
    """MULTIFLOW 2:4 + distillation: the masks file is the undistilled run's byte for byte, and the exported
    ONNX weights pass the 2:4 check `mfdeploy engine` runs (polygraphy)."""
    from mfdeploy.exporting.sparsity import prunable_sparsity

    common = ["--model", str(tiny_clip_dir), "--ratio", "0.5", "--pattern", "2:4", "--calib", "shapes",
              "--calib-samples", "16", "--batch-size", "8"]
    main(["prune", *common, "--out", str(tmp_path / "plain")])
    main(["prune", *common, "--distill-steps", str(STEPS), "--distill-lr", str(LR), "--out", str(tmp_path / "d")])
    # the same tensors and metadata (the file's header order is not fixed: safetensors keeps metadata in a hash map)
    (masks, meta), (masks0, meta0) = (load_masks(tmp_path / d / "masks.safetensors") for d in ("d", "plain"))
    assert meta == meta0 and masks.keys() == masks0.keys()
    assert all(torch.equal(masks[n], masks0[n]) for n in masks)
    rec = json.loads((tmp_path / "d" / "prune.json").read_text())
    assert rec["distill"]["steps_run"] >= 1 and rec["distill"]["masks_held"] is True
    adapter = load(tmp_path / "d")
    plain = load(tmp_path / "plain")
    w, w0 = (a.model.get_parameter("text_model.encoder.layers.0.mlp.fc1.weight") for a in (adapter, plain))
    assert not torch.equal(w, w0)  # distillation changed the weights ...
    groups = w.detach().reshape(w.shape[0], -1, 4)
    assert bool(((groups == 0).sum(-1) >= 2).all())  # ... and every group of 4 still holds two zeros
    main(["export", str(tmp_path / "d"), "--out", str(tmp_path / "onnx")])
    report = prunable_sparsity(adapter, tmp_path / "onnx")
    assert report["all_sparse"] and not report["unmatched"], report


def _held_loss(adapter, teacher, batches) -> float:
    pairs = PairScorer.of(adapter.family, teacher)
    with torch.no_grad():
        losses = [loss_fn(_embed(adapter.model, b), _embed(teacher, b), pairs).item() * len(b) for b in batches]
    return sum(losses) / sum(len(b) for b in batches)


def test_early_stop_restores_the_best_weights(tiny_clip_dir):
    """A learning rate far too large makes the held-out loss rise: training stops, says why, and puts back the
    weights of the best evaluation (their held-out loss is the recorded best)."""
    adapter = load(tiny_clip_dir)
    teacher = copy.deepcopy(adapter.model).eval()
    with torch.no_grad():
        adapter.model.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(0.5)  # a student that differs
    batches = list(pair_batches(adapter, CalibSource("shapes"), 24, 8))
    train, held = batches[:2], batches[2:]
    record = distill(adapter.model, teacher, train, held, steps=40, lr=3.0, eval_every=2)
    assert record["stopped_early"] and record["steps_run"] < 40
    assert "has not improved" in record["stop_reason"] and record["restored_best"]
    losses = [p["held_out_loss"] for p in record["curve"]]
    assert losses[-1] > record["held_out_loss_best"] == min(losses)
    assert _held_loss(adapter, teacher, held) == pytest.approx(record["held_out_loss_best"], rel=1e-5)


def test_no_early_stop_when_held_out_improves(tiny_clip_dir):
    adapter = load(tiny_clip_dir)
    teacher = copy.deepcopy(adapter.model).eval()
    with torch.no_grad():
        adapter.model.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(0.5)
    batches = list(pair_batches(adapter, CalibSource("shapes"), 16, 8))
    record = distill(adapter.model, teacher, batches[:1], batches[:1], steps=6, lr=1e-4, eval_every=3)
    assert not record["stopped_early"] and record["steps_run"] == 6 and record["stop_reason"] is None
    assert record["held_out_loss_best"] < record["held_out_loss_first"]


def test_prunable_only_freezes_the_rest(tiny_clip_dir):
    adapter = load(tiny_clip_dir)
    dense = {n: p.detach().clone() for n, p in load(tiny_clip_dir).model.named_parameters()}
    record = prune_model(adapter, _cfg(tiny_clip_dir, distill_steps=STEPS, distill_lr=LR, distill_params="prunable"))
    masks = record["_masks"]
    d = record["distill"]
    assert d["params"] == "prunable" and d["trained_parameters"] == sum(m.numel() for m in masks.values())
    for name, p in adapter.model.named_parameters():
        if name not in masks:  # LayerNorms, embeddings, biases, projections: as loaded
            assert torch.equal(p.detach(), dense[name]), name
    assert all(p.requires_grad for p in adapter.model.parameters())  # flags restored after training


def test_jsonl_holds_out_its_last_pairs(tiny_clip_dir, shapes_pairs_jsonl):
    record = prune_model(load(tiny_clip_dir), _cfg(tiny_clip_dir, calib=str(shapes_pairs_jsonl), calib_samples=12,
                                                   distill_steps=2))
    d = record["distill"]
    assert (d["train_pairs"], d["held_out_pairs"]) == (10, 2) and "pairs 11-12 of" in d["held_out"]


def test_too_few_pairs_to_hold_out(tiny_clip_dir, shapes_pairs_jsonl, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude", "--calib",
              str(shapes_pairs_jsonl), "--calib-samples", "5", "--distill-steps", "3", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "needs at least 8 calibration pairs" in err and "gives 5" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="two calibration batches"):
        adapter = load(tiny_clip_dir)
        batches = list(pair_batches(adapter, CalibSource("shapes"), 8, 8))
        prune_model(adapter, _cfg(tiny_clip_dir, method="magnitude", distill_steps=2),
                    source=CalibSource("memory", batches=tuple(batches)))


def test_magnitude_with_distill_needs_calibration(tiny_clip_dir, tmp_path, capsys):
    """Magnitude pruning reads no pairs, but distillation does: a non-bundled model without --calib is refused."""
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude",
              "--distill-steps", "3", "--out", str(tmp_path / "o")])
    assert e.value.code != 0 and "--calib is required" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
