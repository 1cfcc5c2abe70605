"""CUDA graph bucketing of the torch-cuda runners (`mfdeploy.runtime.cuda_graphs`), on the CPU: a stand-in
capture replays the tower into the graph's static output, so the bucket choice, the padding, the slicing and
the fallback are the code under test; the padding's parity runs on a real (tiny) CLIP text tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfdeploy.runtime.cuda_graphs import GraphedTower, batch_buckets, length_buckets, smallest_at_least


class FakeCapture:
    """Captures by running the tower once; a replay runs it again on the static buffers, into the same output."""

    def __init__(self, fail_at: tuple[int, ...] | None = None):
        self.shapes: list[tuple] = []
        self.replays: list[tuple] = []
        self.fail_at = fail_at

    def __call__(self, tower, static, pool):
        shape = tuple(static[0].shape)
        if self.fail_at is not None and shape == self.fail_at:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        self.shapes.append(shape)
        out = tower(*static).clone()

        def replay():
            self.replays.append(shape)
            out.copy_(tower(*static))

        return out, replay


def test_buckets():
    assert batch_buckets(1) == [1] and batch_buckets(32) == [1, 2, 4, 8, 16, 32] and batch_buckets(24) == \
        [1, 2, 4, 8, 16, 24]
    assert length_buckets(77) == [8, 16, 32, 64, 77] and length_buckets(64) == [8, 16, 32, 64]
    assert length_buckets(5) == [5]
    assert smallest_at_least(3, [1, 2, 4]) == 4 and smallest_at_least(5, [1, 2, 4]) is None
    with pytest.raises(ValueError):
        batch_buckets(0)


def test_a_call_replays_the_smallest_bucket_that_holds_it_and_returns_its_own_rows():
    weight = torch.randn(6, 4)

    def tower(x):  # rows independent of each other, like a tower's batch
        return torch.tanh(x @ weight.t())

    capture = FakeCapture()
    graphed = GraphedTower(tower, lambda b, n: (torch.zeros(b, 4),), max_batch=8, capture=capture)
    assert graphed.captured and capture.shapes == [(1, 4), (2, 4), (4, 4), (8, 4)]
    for batch, bucket in ((1, 1), (3, 4), (8, 8)):
        x = torch.randn(batch, 4)
        out = graphed(x)
        assert capture.replays[-1] == (bucket, 4) and out.shape == (batch, 6)
        assert torch.allclose(out, tower(x), atol=1e-6)
    x = torch.randn(19, 4)  # over the largest bucket: slices of 8, 8 and 3 (bucket 4)
    capture.replays.clear()
    assert torch.allclose(graphed(x), tower(x), atol=1e-6)
    assert capture.replays == [(8, 4), (8, 4), (4, 4)]


def test_results_are_copies_a_later_replay_cannot_overwrite():
    graphed = GraphedTower(lambda x: x * 2, lambda b, n: (torch.zeros(b, 3),), max_batch=2, capture=FakeCapture())
    first = graphed(torch.ones(2, 3))
    graphed(torch.full((2, 3), 5.0))
    assert torch.equal(first, torch.full((2, 3), 2.0))


def test_a_failed_capture_leaves_the_tower_eager_with_the_reason():
    def tower(x):
        return x + 1

    graphed = GraphedTower(tower, lambda b, n: (torch.zeros(b, 2),), max_batch=4, capture=FakeCapture(fail_at=(2, 2)))
    assert not graphed.captured and not graphed.graphs
    assert graphed.reason == "RuntimeError: operation not permitted when stream is capturing"
    assert torch.equal(graphed(torch.zeros(3, 2)), torch.ones(3, 2))  # eager


def test_text_padding_to_a_length_bucket_changes_no_embedding(tiny_adapter):
    """A CLIP text tower served from length buckets (8, 16, ...): zero ids under a zero mask after each text's
    end token leave its embedding as the eager tower computes it (atol 1e-5), batch padding too."""
    text = tiny_adapter.text_tower().eval()
    capture = FakeCapture()

    def example(b, n):
        return torch.ones(b, n, dtype=torch.int64), torch.ones(b, n, dtype=torch.int64)

    with torch.inference_mode():
        graphed = GraphedTower(text, example, max_batch=4, lengths=length_buckets(tiny_adapter.max_text_len),
                               capture=capture)
        for texts in (["a red circle."], ["a big blue square on the left of a small star.", "a star.", "x"]):
            ids, mask = tiny_adapter.tokenize(texts)
            want = text(ids, mask)
            got = graphed(ids, mask)
            bucket = (smallest_at_least(len(texts), graphed.batches), smallest_at_least(ids.shape[1], graphed.lengths))
            assert capture.replays[-1] == bucket and bucket[1] > ids.shape[1]  # it really padded the length
            assert np.abs((got - want).numpy()).max() < 1e-5
