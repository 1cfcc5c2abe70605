"""The method registry, the one result type, the reporter protocol, and device/dtype handling of the prune code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from mfdeploy.models import load
from mfdeploy.models.clip import CLIP
from mfdeploy.models.family import PairScorer
from mfdeploy.progress import NullReporter
from mfdeploy.pruning import METHODS, MethodResult, MethodSpec, PruneConfig, PruneContext, prune_model
from mfdeploy.pruning.criteria import random_score
from mfdeploy.pruning.methods.ecoflap import direction
from mfdeploy.pruning.stats import ActivationStats

PRUNE_DIR = Path(__file__).resolve().parents[1] / "mfdeploy" / "pruning"


def _keep_first_half(ctx: PruneContext) -> MethodResult:
    """A toy method: every layer loses its second half of input columns."""
    masks = {}
    for name, layer in ctx.layers.items():
        m = torch.ones_like(layer.module.weight, dtype=torch.bool)
        m[:, m.shape[1] // 2:] = False
        masks[f"{name}.weight"] = m
    advance = ctx.reporter.task("toy", total=1)
    advance(1)
    return MethodResult(masks=masks, timings={"toy_s": 0.0}, extra={"toy": True})


def test_a_new_method_is_one_registry_line(tiny_clip_dir, monkeypatch):
    monkeypatch.setitem(METHODS, "toy", MethodSpec(_keep_first_half, "toy", "uniform", calibrates=False))
    adapter = load(tiny_clip_dir)
    rec = prune_model(adapter, PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method="toy", show_progress=False))
    assert (rec["method"], rec["score"], rec["budget"], rec["toy"]) == ("toy", "toy", "uniform", True)
    assert rec["sparsity"]["overall"] == 0.5 and rec["timings"] == {"toy_s": 0.0}
    assert rec["budget_by_role"]["vision"]["fc1"] == 0.5
    for name, layer in adapter.prunable_layers().items():  # prune_model folded the masks
        w = layer.module.weight
        assert not bool(w[:, w.shape[1] // 2:].any()) and bool(w[:, : w.shape[1] // 2].any()), name


def test_registry_covers_every_method():
    assert list(METHODS) == ["random", "magnitude", "wanda", "multiflow", "ecoflap", "mope"]
    assert {m: s.default_budget for m, s in METHODS.items()} == {
        "random": "uniform", "magnitude": "uniform", "wanda": "uniform", "multiflow": "modality",
        "ecoflap": "ecoflap", "mope": None}
    source = (PRUNE_DIR / "run.py").read_text()
    assert "ecoflap" not in source and "mope" not in source  # no per-method branch in the runner


@pytest.mark.parametrize("method,expected", [
    ("wanda", {"calibration pairs": [8, 8], "scoring layers": [24, 24]}),  # 2 towers x 2 layers x 6 roles
    ("ecoflap", {"zeroth-order scores": [24, 24], "wanda block by block": [4, 4]}),  # 1 batch x 24 layers
    ("mope", {"MoPE width (heads, neurons)": [24, 24]}),  # 4 layers x (2 heads + 4 neuron groups)
])
def test_progress_goes_to_a_reporter(tiny_clip_dir, recording_reporter, method, expected):
    rec = recording_reporter
    cfg = PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method=method, calib="shapes", calib_samples=8,
                      batch_size=8, ecoflap_samples=4, mope_neuron_group=32 if method == "mope" else 64,
                      show_progress=False)
    prune_model(load(tiny_clip_dir), cfg, reporter=rec)
    assert rec.tasks == expected


def test_prune_package_never_imports_rich():
    for path in PRUNE_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "rich" or n.startswith("rich.") for n in names), path
        assert len(path.read_text().splitlines()) <= 300, path


def test_statistics_accumulate_on_the_weights_device():
    """Accumulators are created where the weights are (meta here stands in for cuda)."""
    from mfdeploy.models.base import PrunableLayer

    layer = torch.nn.Linear(8, 4, device="meta")
    stats = ActivationStats({"l": PrunableLayer(layer, "vision", "b0", "fc1")})
    assert stats.mean_sq["l"].device.type == "meta" and stats.mean_sq["l"].dtype == torch.float32
    stats._update("l", torch.ones(3, 8, device="meta"))  # the add_ runs on that device
    assert stats.tokens["l"] == 3


def test_perturbations_and_targets_on_the_weights_device():
    gen_cpu, gen_meta = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    w = torch.zeros(4, 6)
    z_cpu = direction(w, gen_cpu)
    z_meta = direction(w.to("meta"), gen_meta)
    assert z_meta.device.type == "meta" and z_meta.shape == w.shape
    assert torch.equal(z_cpu, torch.randn(4, 6, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(direction(w.double(), torch.Generator().manual_seed(3)), z_cpu.double())
    img = torch.nn.functional.normalize(torch.ones(3, 5, device="meta"), dim=-1)
    assert PairScorer(CLIP, torch.ones(1, device="meta")).loss(img, img).device.type == "meta"
    assert random_score(w.to("meta"), None, torch.Generator().manual_seed(0)).device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("method,budget", [("wanda", None), ("multiflow", None), ("magnitude", "ecoflap")])
def test_prune_a_model_in_other_dtypes(tiny_clip_dir, dtype, method, budget):
    adapter = load(tiny_clip_dir)
    adapter.model.to(dtype)
    cfg = PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method=method, budget=budget, calib="shapes",
                      calib_samples=8, batch_size=4, ecoflap_samples=4, show_progress=False)
    rec = prune_model(adapter, cfg, reporter=NullReporter())
    assert abs(rec["sparsity"]["overall"] - 0.5) < 0.005
    for name, layer in adapter.prunable_layers().items():
        w = layer.module.weight
        assert w.dtype == dtype and not bool(w[~rec["_masks"][f"{name}.weight"]].any())
