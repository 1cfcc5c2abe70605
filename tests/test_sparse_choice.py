"""Per-layer 2:4 choice of `torch-cuda-sparse` (`mfdeploy.runtime.sparse_choice`), on the CPU with made-up times
and a stand-in for the compression (the real kernels need CUDA)."""

from __future__ import annotations

import torch
from torch import nn

from mfdeploy.runtime import torch_cuda
from mfdeploy.runtime.sparse_choice import choose, rows_per_call, summary


def test_choose_keeps_sparse_only_where_its_summed_time_is_lower():
    dense, sparse = torch.zeros(8, 8), torch.ones(8, 8)  # told apart by the fake timer

    def timer(weight, bias, rows):  # sparse wins at large row counts only, as measured on an H200
        return (2e-3 if rows < 1000 else 4e-3) if weight.sum() > 0 else (1e-3 if rows < 1000 else 8e-3)

    wins = choose("a", dense, sparse, None, [50, 1600], timer)
    assert wins == {"sparse": True, "rows": [50, 1600], "dense_ms": [1.0, 8.0], "sparse_ms": [2.0, 4.0]}
    loses = choose("b", dense, sparse, None, [50, 200], timer)
    assert loses["sparse"] is False and loses["dense_ms"] == [1.0, 1.0] and loses["sparse_ms"] == [2.0, 2.0]
    assert summary({"a": wins, "b": loses}) == "1 of 2 linears sparse"


def test_rows_per_call_counts_each_linears_rows(tiny_adapter):
    model = tiny_adapter.model
    size = tiny_adapter.image_size
    ids, mask = tiny_adapter.tokenize(["a red circle."])
    rows = rows_per_call(model, [lambda: tiny_adapter.vision_tower()(torch.zeros(1, 3, size, size)),
                                 lambda: tiny_adapter.text_tower()(ids, mask)])
    tokens = (size // model.config.vision_config.patch_size) ** 2 + 1  # patches + the class token
    assert rows["vision_model.encoder.layers.0.mlp.fc1"] == tokens
    assert rows["text_model.encoder.layers.0.self_attn.q_proj"] == ids.shape[1]
    assert rows["visual_projection"] == 1 and rows["text_projection"] == 1  # the pooled row


def test_sparsify_linears_keeps_what_the_choice_keeps(monkeypatch):
    monkeypatch.setattr(torch_cuda, "_semi_structured", lambda kernels: lambda w: w.clone())  # CUDA-free stand-in
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    with torch.no_grad():
        for layer in model[:2]:
            layer.weight[:, ::2] = 0  # 2:4; the third layer is dense
    sparse, dense = torch_cuda.sparsify_linears(model, keep=lambda name, layer, weight: name == "0")
    assert sparse == ["0"] and dense == {"1": "dense is faster at the serving token counts"}
    assert torch_cuda.sparsify_linears(model)[0] == ["0", "1"]  # no choice: sparse wherever the kernels take it
