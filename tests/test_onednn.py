"""oneDNN's GEMM for the eager float32 torch towers (mfdeploy.runtime.onednn, TorchRunner's `onednn_linear`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mfdeploy
from mfdeploy.runtime import onednn
from mfdeploy.runtime.torch_runner import TorchRunner

needs_onednn = pytest.mark.skipif(onednn.op() is None, reason="this PyTorch build has no oneDNN linear")
TEXTS = ["a red circle.", "a big blue square on the left.", "a small green triangle at the top right."]


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 8, bias=False)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)  # out_proj: a Linear subclass with forward kept
        self.register_buffer("scale", torch.full((8,), 0.5))

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.b(h) * self.scale


@needs_onednn
def test_the_copy_shares_the_weights_runs_the_same_products_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    net, x = _Net().eval(), torch.randn(3, 5, 16)
    want = net(x)
    twin, swapped = onednn.onednn_copy(net)
    assert swapped == 3  # a, b, and the attention's out_proj (a Linear subclass with no forward of its own)
    assert type(twin.a) is onednn.OneDNNLinear and type(twin.attn.out_proj) is onednn.OneDNNLinear
    assert type(net.a) is nn.Linear and type(net.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    for (name, p), (twin_name, q) in zip(net.state_dict().items(), twin.state_dict().items(), strict=True):
        assert name == twin_name and p.data_ptr() == q.data_ptr(), name  # shared, not copied
    got = twin(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        net.b.weight.mul_(2)  # a change to the model's weights is the copy's
    torch.testing.assert_close(twin(x), 2 * want, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_swapped_restores_each_layer_class_and_runs_through_onednn(monkeypatch):
    net, x = _Net().eval(), torch.randn(2, 4, 16)
    calls = []
    real = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *a: calls.append(1) or real(*a))
    with onednn.swapped(net) as n:
        net(x)
    assert n == 3 and len(calls) == 2  # out_proj's weight is used by MultiheadAttention's own functional call
    assert type(net.a) is nn.Linear and type(net.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    net(x)
    assert len(calls) == 2


@needs_onednn
def test_the_eager_fp32_runner_uses_onednn_and_gives_the_same_embeddings():
    """The bundled model: linears through oneDNN (asked for), embeddings within 1e-5 of PyTorch's own `linear`,
    and the adapter's own towers untouched (a build's loaded models are shared)."""
    adapter = mfdeploy.load()
    fast, plain = TorchRunner(adapter, onednn_linear=True), TorchRunner(adapter, onednn_linear=False)
    layers = sum(isinstance(m, nn.Linear) for t in (adapter.vision_tower(), adapter.text_tower()) for m in t.modules())
    assert fast.linears == f"oneDNN GEMM ({layers} layers)" and plain.linears is None
    assert all(type(m) is not onednn.OneDNNLinear for m in adapter.model.modules())
    pixels = np.random.default_rng(0).standard_normal((3, 3, adapter.image_size, adapter.image_size), np.float32)
    np.testing.assert_allclose(fast.embed_images(pixels), plain.embed_images(pixels), atol=1e-5)
    ids, mask = (t.numpy() for t in adapter.tokenize(TEXTS))
    np.testing.assert_allclose(fast.embed_texts(ids, mask), plain.embed_texts(ids, mask), atol=1e-5)


def test_the_runner_keeps_pytorchs_linear_where_onednn_is_not_faster_or_the_towers_are_not_fp32(monkeypatch):
    adapter = mfdeploy.load()
    monkeypatch.setattr(onednn, "worth_it", lambda: False)
    assert TorchRunner(adapter).linears is None
    monkeypatch.setattr(onednn, "worth_it", lambda: True)
    assert TorchRunner(adapter, dtype="bfloat16").linears is None  # oneDNN already runs PyTorch's bf16 linear
    if onednn.op() is not None:
        assert TorchRunner(adapter).linears is not None
