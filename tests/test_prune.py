import copy
import math

import pytest
import torch

from mfdeploy.errors import UserError
from mfdeploy.models import load
from mfdeploy.models.inputs import Batch, CalibSource, pair_batches
from mfdeploy.pruning import (
    ActivationStats,
    PruneConfig,
    apply_masks,
    collect_stats,
    compute_masks,
    load_masks,
    multiflow_score,
    prune_model,
    save_masks,
    sparsity_report,
)
from mfdeploy.pruning.patterns import mask_nm

SHAPES = CalibSource("shapes")


def _stats(adapter, n=16):
    layers = adapter.prunable_layers()
    return layers, collect_stats(adapter, layers, pair_batches(adapter, SHAPES, n, 8)).norms()


@pytest.mark.parametrize("method,budget", [("random", "uniform"), ("magnitude", "uniform"), ("magnitude", "global"),
                                           ("magnitude", "modality"), ("wanda", "uniform"), ("multiflow", "modality")])
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_sparsity_hits_ratio(tiny_adapter, method, budget, ratio):
    layers, act = _stats(tiny_adapter)
    masks, info = compute_masks(layers, method, ratio, budget, None, act, seed=0)
    rep = sparsity_report(masks, layers)
    assert abs(rep["overall"] - ratio) <= 0.005
    if budget == "modality":
        for mod, s in rep["per_modality"].items():
            assert abs(s - ratio) <= 0.005, mod
    if method == "multiflow":
        # budgets follow the pooled magnitude distribution: not uniform across layers
        assert len({round(v["sparsity"], 3) for v in rep["per_layer"].values()}) > 1
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == tiny_adapter.model.get_parameter(name).shape


@pytest.mark.parametrize("method", ["random", "magnitude", "wanda", "multiflow"])
def test_two_four_pattern(tiny_adapter, method):
    layers, act = _stats(tiny_adapter)
    masks, info = compute_masks(layers, method, 0.5, None, (2, 4), act, seed=0)
    assert info["dense_layers"] == []
    for mask in masks.values():
        groups = mask.reshape(mask.shape[0], -1, 4)  # along in_features
        assert int(groups.sum(-1).max()) <= 2
        assert int(groups.sum(-1).min()) == 2


def test_two_four_magnitude_equals_modelopt(tiny_clip_dir):
    mts = pytest.importorskip("modelopt.torch.sparsity")
    ours = load(tiny_clip_dir)
    masks, _ = compute_masks(ours.prunable_layers(), "magnitude", 0.5, None, (2, 4))
    ref = load(tiny_clip_dir).model
    mts.sparsify(ref, "sparse_magnitude")
    mts.export(ref)
    checked = 0
    for name, mask in masks.items():
        w = ref.get_parameter(name)
        if w.shape[0] % 8 or w.shape[1] % 16:  # modelopt skips these
            continue
        assert torch.equal((w != 0), mask), name
        checked += 1
    assert checked == len(masks)


def test_multiflow_score_matches_equations():
    torch.manual_seed(0)
    w = torch.randn(5, 7)
    a = torch.rand(7) + 0.1
    got = multiflow_score(w, a, None)
    expected = torch.empty(5, 7)
    for i in range(5):
        for j in range(7):
            imp_out = sum(abs(w[i, q].item()) * a[q].item() for q in range(7)) / 7
            imp_in = sum(abs(w[p, j].item()) * a[j].item() for p in range(5)) / 5
            expected[i, j] = imp_out * abs(w[i, j].item()) * imp_in
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def test_multiflow_layer_mask_from_scores_and_budget(tiny_adapter):
    """Each layer prunes floor(s_p * numel) lowest scores, s_p from the per-modality |W| threshold."""
    layers, act = _stats(tiny_adapter)
    masks, _ = compute_masks(layers, "multiflow", 0.6, "modality", None, act)
    for modality in ("vision", "text"):
        group = {n: l for n, l in layers.items() if l.modality == modality}
        pooled = torch.cat([l.module.weight.detach().abs().flatten() for l in group.values()])
        t = torch.kthvalue(pooled, math.floor(0.6 * pooled.numel())).values
        for n, l in group.items():
            k = int((l.module.weight.detach().abs() <= t).sum())
            m = masks[f"{n}.weight"]
            assert int((~m).sum()) == k
            s = multiflow_score(l.module.weight, act[n], None)
            assert s[~m].max() <= s[m].min()


def test_activation_stats_running_mean_and_padding(tiny_adapter):
    layers = tiny_adapter.prunable_layers()
    batches = list(pair_batches(tiny_adapter, SHAPES, 12, 5))  # uneven batches: 5, 5, 2
    stats = collect_stats(tiny_adapter, layers, batches)
    # the same statistic computed directly from the stored activations of one big batch
    big = Batch(torch.cat([b.pixel_values for b in batches]), *_pad_cat(batches))
    direct = {}
    hooks = [l.module.register_forward_hook(_store(direct, n)) for n, l in layers.items()]
    with torch.no_grad():
        tiny_adapter.vision_tower()(big.pixel_values)
        tiny_adapter.text_tower()(big.input_ids, big.attention_mask)
    for h in hooks:
        h.remove()
    valid = big.attention_mask.bool()
    for n, l in layers.items():
        x = direct[n]
        x = x[valid] if l.modality == "text" else x.reshape(-1, x.shape[-1])
        torch.testing.assert_close(stats.mean_sq[n], x.pow(2).mean(0), rtol=1e-5, atol=1e-7)
    # hooks are gone
    assert all(not l.module._forward_hooks for l in layers.values())


def test_padding_does_not_change_text_stats(tiny_adapter):
    layers = {n: l for n, l in tiny_adapter.prunable_layers().items() if l.modality == "text"}
    caps = ["a red circle.", "a photo of a small blue square at the top left and a large star."]
    ids, mask = tiny_adapter.tokenize(caps[:1])
    ids2, mask2 = tiny_adapter.tokenize(caps)  # the first caption now carries padding
    px = torch.zeros(1, 3, 32, 32)
    alone = ActivationStats(layers)
    text = tiny_adapter.text_tower()
    vis = tiny_adapter.vision_tower()
    with alone.hooks():
        alone.observe(Batch(px, ids, mask), vis, text)
    padded = ActivationStats(layers)
    with padded.hooks():
        padded.observe(Batch(px, ids2[:1], mask2[:1]), vis, text)
    assert mask2[0].sum() < mask2.shape[1]
    for n in layers:
        torch.testing.assert_close(alone.mean_sq[n], padded.mean_sq[n], rtol=1e-5, atol=1e-7)
        assert alone.tokens[n] == padded.tokens[n]


def _pad_cat(batches):
    L = max(b.input_ids.shape[1] for b in batches)
    ids = torch.cat([torch.nn.functional.pad(b.input_ids, (0, L - b.input_ids.shape[1])) for b in batches])
    mask = torch.cat([torch.nn.functional.pad(b.attention_mask, (0, L - b.input_ids.shape[1])) for b in batches])
    return ids, mask


def _store(d, name):
    def hook(_m, inputs, _o):
        d[name] = inputs[0].detach().clone()
    return hook


@pytest.mark.parametrize("method", ["random", "multiflow"])
def test_masks_deterministic(tiny_clip_dir, method):
    runs = []
    for _ in range(2):
        adapter = load(tiny_clip_dir)
        cfg = PruneConfig(ratio=0.6, model=str(tiny_clip_dir), method=method, calib="shapes", calib_samples=16,
                          batch_size=8, seed=3, show_progress=False)
        runs.append(prune_model(adapter, cfg)["_masks"])
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_nonprunable_unchanged_and_roundtrip(tiny_clip_dir, tmp_path):
    dense = load(tiny_clip_dir)
    adapter = load(tiny_clip_dir)
    cfg = PruneConfig(ratio=0.5, model=str(tiny_clip_dir), calib="shapes", calib_samples=16, batch_size=8,
                      show_progress=False)
    record = prune_model(adapter, cfg)
    masks = record["_masks"]
    before = dict(dense.model.named_parameters())
    for name, p in adapter.model.named_parameters():
        if name in masks:
            assert torch.equal(p[~masks[name]], torch.zeros_like(p[~masks[name]]))
            assert torch.equal(p[masks[name]], before[name][masks[name]])
        else:
            assert torch.equal(p, before[name]), name
    # masked model == folded checkpoint reloaded == masks applied again
    adapter.save(tmp_path / "ckpt")
    save_masks(tmp_path / "m.safetensors", masks, {"method": "multiflow"})
    reloaded = load(tmp_path / "ckpt")
    again = load(tiny_clip_dir)
    loaded, meta = load_masks(tmp_path / "m.safetensors", again)
    assert meta["method"] == "multiflow" and "mfdeploy_version" in meta
    apply_masks(again.model, loaded)
    px = torch.randn(4, 3, 32, 32)
    ids, mask = adapter.tokenize(["a red circle.", "a star", "a photo of a large cyan cross at the top.", "x"])
    with torch.no_grad():
        outs = [(a.vision_tower()(px), a.text_tower()(ids, mask)) for a in (adapter, reloaded, again)]
    for v, t in outs[1:]:
        assert torch.equal(v, outs[0][0]) and torch.equal(t, outs[0][1])


def test_masks_from_other_model_rejected(tiny_adapter, tiny_clip_other_dir, tmp_path):
    other = load(tiny_clip_other_dir)
    masks, _ = compute_masks(other.prunable_layers(), "magnitude", 0.5)
    save_masks(tmp_path / "m.safetensors", masks, {"method": "magnitude"})
    with pytest.raises(UserError, match="different model"):
        load_masks(tmp_path / "m.safetensors", tiny_adapter)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a valid masks file"):
        load_masks(tmp_path / "bad.safetensors", tiny_adapter)


def test_mask_nm_groups_along_in_features():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0]])
    assert mask_nm(scores).tolist() == [[True, True, False, False, False, False, True, True]]


def test_prune_does_not_touch_copy(tiny_adapter):
    state = copy.deepcopy(tiny_adapter.model.state_dict())
    layers, act = _stats(tiny_adapter)
    compute_masks(layers, "wanda", 0.5, None, None, act)
    for k, v in tiny_adapter.model.state_dict().items():
        assert torch.equal(v, state[k])  # computing masks never modifies weights
