"""ECoFLaP allocation and zeroth-order scores; MoPE structured pruning and its checkpoint."""

import json

import pytest
import torch

from mfdeploy.cli import main
from mfdeploy.models import load
from mfdeploy.models.inputs import CalibSource, pair_batches
from mfdeploy.pruning import PruneConfig, prune_model
from mfdeploy.pruning.methods.ecoflap import allocate_keep, zeroth_order_scores


@pytest.mark.parametrize("sparsity,delta", [(0.5, 0.1), (0.75, 0.1), (0.3, 0.2)])
def test_allocation_exact_capped_monotone(sparsity, delta):
    sizes = [1000, 1000, 1000, 1000, 4000, 4000]
    scores = [0.1, 5.0, 1.0, 0.0, 3.0, 0.5]
    keep = allocate_keep(sizes, scores, sparsity, sparsity + delta)
    total = sum(sizes)
    assert sum(keep) == total - int(sparsity * total)  # the global budget, exactly
    for k, n in zip(keep, sizes):
        assert k <= n
        assert 1 - k / n <= sparsity + delta + 1e-9  # the cap
    ratio = [k / n for k, n in zip(keep, sizes)]
    # equal-size blocks: a higher score never keeps less
    first = sorted(range(4), key=lambda i: scores[i])
    assert all(ratio[a] <= ratio[b] for a, b in zip(first, first[1:]))
    assert ratio[1] > ratio[0]


def test_allocation_saturates_top_block():
    keep = allocate_keep([100, 100, 100], [1000.0, 1.0, 1.0], 0.5, 0.9)
    assert keep[0] == 100 and sum(keep) == 150 and keep[1] == keep[2] == 25


def test_zeroth_order_deterministic_and_restores(tiny_clip_dir):
    adapter = load(tiny_clip_dir)
    layers = adapter.prunable_layers()
    batches = list(pair_batches(adapter, CalibSource("shapes"), 8, 8))
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    a = zeroth_order_scores(adapter, layers, batches, seed=1)
    b = zeroth_order_scores(adapter, layers, batches, seed=1)
    c = zeroth_order_scores(adapter, layers, batches, seed=2)
    assert a == b and a != c
    assert len(a) == 4 and all(v > 0 for v in a.values())
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_ecoflap_prune(tiny_clip_dir, tmp_path):
    out = tmp_path / "e"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.6", "--method", "ecoflap", "--calib", "shapes",
          "--calib-samples", "16", "--batch-size", "8", "--out", str(out)])
    rec = json.loads((out / "prune.json").read_text())
    assert abs(rec["sparsity"]["overall"] - 0.6) < 0.01
    budgets = rec["block_budgets"]
    assert len(budgets) == 4 and all(s <= 0.7 + 1e-9 for s in budgets.values())
    assert set(rec["block_scores"]) == set(budgets)


@pytest.mark.parametrize("distill", [0, 3])
def test_mope_structured_roundtrip(tiny_clip_dir, tmp_path, distill):
    out = tmp_path / "m"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "mope", "--calib", "shapes",
          "--calib-samples", "16", "--batch-size", "8", "--neuron-group", "16", "--distill-steps", str(distill),
          "--out", str(out)])
    rec = json.loads((out / "prune.json").read_text())
    assert abs(rec["sparsity"]["overall"] - 0.5) < 0.05
    assert (distill > 0) == ("distill" in rec)
    structure = json.loads((out / "pruned" / "mfdeploy_structure.json").read_text())
    for tower in ("vision_model", "text_model"):
        assert all(layer["heads"] == 1 and layer["intermediate"] == 64 for layer in structure[tower]["layers"])
    adapter = load(out)
    q = adapter.model.get_parameter("vision_model.encoder.layers.0.self_attn.q_proj.weight")
    fc1 = adapter.model.get_parameter("text_model.encoder.layers.1.mlp.fc1.weight")
    assert tuple(q.shape) == (16, 32) and tuple(fc1.shape) == (64, 32)
    ids, mask = adapter.tokenize(["a red circle.", "a photo of a large star at the top."])
    with torch.no_grad():
        v = adapter.vision_tower()(torch.randn(2, 3, 32, 32))
        t = adapter.text_tower()(ids, mask)
    assert v.shape == (2, 16) and torch.isfinite(t).all()


def test_mope_equals_in_memory(tiny_clip_dir, tmp_path):
    adapter = load(tiny_clip_dir)
    cfg = PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method="mope", calib="shapes", calib_samples=16,
                      batch_size=8, mope_neuron_group=16, mope_depth_share=1.0, show_progress=False)
    rec = prune_model(adapter, cfg)
    # the whole ratio from depth: one of two layers per tower goes, the kept one stays at full width
    for tower in ("vision_model", "text_model"):
        assert len(rec["structure"][tower]["kept_layers"]) == 1
        assert rec["structure"][tower]["layers"] == [{"heads": 2, "intermediate": 128}]
    assert len(adapter.model.vision_model.encoder.layers) == 1
    from mfdeploy.pipelines.prune import write_prune_outputs

    write_prune_outputs(adapter, rec, tmp_path)
    again = load(tmp_path)
    px = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(adapter.vision_tower()(px), again.vision_tower()(px))


@pytest.mark.parametrize("args,message", [
    (["--ratio", "0.9", "--method", "mope"], "every attention head"),
    (["--ratio", "0.5", "--method", "mope", "--pattern", "2:4"], "unstructured sparsity only"),
    (["--ratio", "0.5", "--method", "wanda", "--distill-steps", "-1"], "--distill-steps -1"),
    (["--ratio", "0.5", "--method", "wanda", "--distill-steps", "5", "--distill-lr", "0"], "--distill-lr 0"),
    (["--ratio", "0.5", "--distill-steps", "5", "--distill-params", "some"], "choose all or prunable"),
])
def test_mope_bad_input(tiny_clip_dir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(tiny_clip_dir), "--calib", "shapes", "--calib-samples", "8",
              "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert e.value.code != 0 and message in err
    assert not (tmp_path / "o").exists()


def test_distill_needs_calibration(tiny_clip_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "mope", "--distill-steps", "5",
              "--out", str(tmp_path / "o")])
    assert e.value.code != 0 and "--calib is required" in capsys.readouterr().err


def test_mope_checkpoint_exports_with_parity(tiny_clip_dir, tmp_path):
    out = tmp_path / "m"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "mope", "--calib", "shapes",
          "--calib-samples", "16", "--batch-size", "8", "--neuron-group", "16", "--out", str(out)])
    main(["export", str(out), "--out", str(tmp_path / "onnx")])
    manifest = json.loads((tmp_path / "onnx" / "export.json").read_text())
    for tower in ("vision", "text"):
        assert manifest["parity"][tower]["min_cosine"] >= 0.9999
    import onnx

    q = [i for i in onnx.load(str(tmp_path / "onnx" / "vision.onnx")).graph.initializer if tuple(i.dims) == (32, 16)]
    assert q, "the cut q/k/v projections ([in=32, out=16]) are in the exported graph"
