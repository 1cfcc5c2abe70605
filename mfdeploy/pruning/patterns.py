"""From scores to masks: lowest-k per layer, per row, or N:M along in_features. True = keep."""

from __future__ import annotations

import math

import torch


def mask_layer(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Prune exactly the `k` lowest scores of the tensor (ties broken by flat index)."""
    flat = scores.flatten()
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k <= 0:
        return keep.view(scores.shape)
    if k >= flat.numel():
        return torch.zeros_like(keep).view(scores.shape)
    t = torch.kthvalue(flat, k).values  # the k-th smallest score
    below = flat < t
    keep[below] = False
    need = k - int(below.sum())
    if need > 0:
        ties = torch.nonzero(flat == t).flatten()[:need]
        keep[ties] = False
    return keep.view(scores.shape)


def mask_rows(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Each output row loses its lowest scores (Wanda's comparison group), `floor(s * numel)` in all."""
    out, inp = scores.shape
    return mask_rows_k(scores, math.floor(sparsity * out * inp))


def mask_rows_k(scores: torch.Tensor, k_total: int) -> torch.Tensor:
    """Prune exactly `k_total` weights, spread over the output rows, each row losing its lowest scores.

    Every row loses `floor(k / out)`, and the first `k mod out` rows one more,
    so narrow layers do not drift below the target by rounding.
    """
    out, _ = scores.shape
    base, extra = divmod(k_total, out)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k_total <= 0:
        return keep
    order = torch.sort(scores, dim=1, stable=True).indices  # [out, in], lowest first
    if base > 0:
        keep.scatter_(1, order[:, :base], False)
    if extra > 0:
        keep[torch.arange(extra, device=scores.device), order[:extra, base]] = False
    return keep


def nm_eligible(in_features: int, m: int = 4) -> bool:
    """N:M grouping needs in_features to be a multiple of M."""
    return in_features % m == 0


def mask_nm(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the `n` highest scores in every group of `m` consecutive input features of every row.

    The grouping runs along dim 1 (in_features): a torch Linear exports to
    ONNX as MatMul with a `[in, out] = [K, N]` weight, and TensorRT's sparse
    tensor cores need the pattern along K.
    """
    out, inp = scores.shape
    if inp % m:
        raise ValueError(f"in_features={inp} is not a multiple of {m}")
    groups = scores.reshape(out, inp // m, m)  # [out, in/m, m]
    top = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]  # [out, in/m, n]
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, top, True)
    return keep.reshape(out, inp)


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4); None/'unstructured' -> None."""
    if pattern in (None, "", "unstructured", "dense"):
        return None
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"pattern {pattern!r}: expected N:M such as 2:4") from None
    if not 0 < n < m:
        raise ValueError(f"pattern {pattern!r}: need 0 < N < M")
    return n, m
