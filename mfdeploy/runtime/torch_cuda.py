"""PyTorch on a CUDA GPU in half precision, with 2:4 weights on the sparse tensor cores (no TensorRT needed).

`torch.sparse.to_sparse_semi_structured` stores a 2:4-masked fp16/bf16
weight compressed (cuSPARSELt or CUTLASS kernels, Ampere and newer); an
`nn.Linear` holding one runs its matmul on the sparse tensor cores. Layers
whose weight is not 2:4, or whose shape the kernels refuse, stay dense and
are listed in `dense_layers` with the reason.

Measured on an H200 with torch 2.11 (docs/results/gpu.md): each cuSPARSELt
call costs about 1 ms of host time, so 2:4 towers run slower than dense
ones, even replayed from a CUDA graph; CUTLASS's kernels refuse compute
capability 9.x. MoPE (structured) is what runs faster there.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mfdeploy.errors import first_line
from mfdeploy.models.base import Adapter
from mfdeploy.runtime.base import BackendUnavailable
from mfdeploy.runtime.torch_runner import TorchRunner

log = logging.getLogger(__name__)
DEFAULT_MAX_BATCH = 32  # the largest batch bucket when the caller names none (serve's --max-batch default)


def cuda_unavailable() -> str | None:
    """Why torch cannot run on a CUDA GPU here, or None when it can."""
    if torch.version.cuda is None:
        return "this torch is a CPU-only build (no CUDA)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    return None


def cuda_event_seconds(call: Callable[[], Any], device: torch.device | str | None = None) -> float:
    """Seconds between CUDA events recorded around `call`, the device synchronised before and after (host gaps
    between its kernels included)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def is_2to4(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive input weights of every row holds at least 2 zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    groups = weight.detach().reshape(weight.shape[0], -1, 4)  # [out, in/4, 4]
    return bool(((groups == 0).sum(-1) >= 2).all())


SPARSE_KERNELS = ("default", "cusparselt", "cutlass")


def _semi_structured(kernels: str):
    """The function that compresses a 2:4 weight for `kernels` (torch's own choice for "default")."""
    from torch.sparse import (
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
        to_sparse_semi_structured,
    )

    if kernels not in SPARSE_KERNELS:
        raise ValueError(f"unknown sparse kernels {kernels!r}; known: {', '.join(SPARSE_KERNELS)}")
    return {"default": to_sparse_semi_structured, "cusparselt": SparseSemiStructuredTensorCUSPARSELT.from_dense,
            "cutlass": SparseSemiStructuredTensorCUTLASS.from_dense}[kernels]


# (name, layer, compressed weight) -> keep it sparse; in FP8: (name, dense FP8 module, 2:4 FP8 module)
Keep = Callable[[str, Any, Any], bool]


def sparsify_linears(model: nn.Module, kernels: str = "default",
                     keep: Keep | None = None) -> tuple[list[str], dict[str, str]]:
    """Swap the weight of every 2:4 `nn.Linear` for its semi-structured form, in place.

    Args:
        kernels: "default" (torch's choice: cuSPARSELt where torch has it), "cusparselt" or "cutlass".
        keep: (name, layer, compressed weight) -> whether to keep the sparse form (None: always); a layer it
            declines stays dense, listed with the reason "dense is faster".

    Returns:
        (names made sparse, {name: why it stayed dense} for 2:4 layers refused by the kernels or by `keep`).
    """
    compress = _semi_structured(kernels)
    sparse, refused = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not is_2to4(module.weight):
            continue
        try:
            weight = compress(module.weight.detach())
            # a first call: some kernels refuse only when run (CUTLASS's need compute capability 8.x)
            nn.functional.linear(torch.zeros(32, weight.shape[1], dtype=weight.dtype, device=weight.device), weight)
        except (RuntimeError, ValueError, NotImplementedError) as e:
            refused[name] = first_line(e)
            continue
        if keep is not None and not keep(name, module, weight):
            refused[name] = "dense is faster at the serving token counts"
            continue
        module.weight = nn.Parameter(weight, requires_grad=False)
        sparse.append(name)
    return sparse, refused


class TorchCudaRunner(TorchRunner):
    """Both towers of a copy of the model on a CUDA GPU in `dtype`; `sparse`: 2:4 layers on sparse kernels.

    Embeddings come back as host arrays: the copy to the host waits for the GPU, so a timed call is complete.

    Raises:
        BackendUnavailable: no CUDA here (the reason says which part is missing).
    """

    timing = "CUDA events"

    def __init__(self, adapter: Adapter, sparse: bool = False, dtype: torch.dtype = torch.float16,
                 device: str = "cuda", kernels: str = "default", compile: bool = False, cuda_graphs: bool = True,
                 max_batch: int | None = None, max_text_len: int | None = None, choose_layers: bool = True,
                 fp8: bool = False):
        """Copy the model to the GPU, sparsify its 2:4 linears if asked, compile and capture its towers.

        Args:
            cuda_graphs: serve each tower from CUDA graphs captured now, one per batch (and text length)
                bucket (`mfdeploy.runtime.cuda_graphs`); a tower whose capture fails stays eager, the reason
                in `graphs` and the log.
            max_batch: the largest batch bucket (default 32; larger calls run in slices of it).
            max_text_len: the longest text bucket (default: the model's text length).
            choose_layers: `sparse`: keep each 2:4 linear sparse only where it times faster than dense at its
                serving token counts (`mfdeploy.runtime.sparse_choice`; the times in `sparse_choice`); False:
                sparse wherever the kernels take it.
            fp8: every linear in FP8 (`mfdeploy.runtime.fp8`), the rest of the tower in bfloat16; refused on a
                GPU without FP8 tensor cores. With `sparse`, a 2:4 linear runs on cuSPARSELt's FP8 kernels
                (`Fp8SparseLinear`) where that times faster than its dense FP8 form (`choose_layers`), or always.
        """
        reason = cuda_unavailable()
        if reason is not None:
            raise BackendUnavailable(reason)
        self.name = "torch-cuda-sparse" if sparse else "torch-cuda"
        if fp8:
            from mfdeploy.runtime.fp8 import fp8_unsupported, to_fp8

            reason = fp8_unsupported(torch.device(device))
            if reason is not None:
                raise BackendUnavailable(reason)
            dtype = torch.bfloat16  # torch's row-wise scaled matmul returns bf16: the rest of the tower follows
        placed = copy.copy(adapter)  # the caller's model stays where it is (other runners share it)
        placed.model = copy.deepcopy(adapter.model).to(device=device, dtype=dtype).eval()
        self.sparse_choice: dict[str, dict[str, Any]] = {}  # 2:4 linear -> times dense and sparse, and the pick
        keep = self._chooser(placed, max_batch or DEFAULT_MAX_BATCH, fp8) if sparse and choose_layers else None
        self.sparse_layers: list[str] = []
        self.dense_layers: dict[str, str] = {}
        if fp8:
            self.fp8_layers, self.fp8_kept = to_fp8(placed.model, self._fp8_maker(keep) if sparse else None)
        else:
            self.fp8_layers, self.fp8_kept = [], {}
            if sparse:
                self.sparse_layers, self.dense_layers = sparsify_linears(placed.model, kernels, keep)
        if keep is not None:
            from mfdeploy.runtime.sparse_choice import summary

            log.info("%s: %s (each timed dense and sparse at its serving token counts)", self.name,
                     summary(self.sparse_choice))
        super().__init__(placed, compile=compile)
        if fp8:
            self.precision = "fp8"  # the matmuls; LayerNorm, softmax and the residual stream run in bf16
        self.graphs: dict[str, str] = {}  # tower -> "N graphs" or "eager: why"
        if cuda_graphs:
            self._capture(placed, max_batch or DEFAULT_MAX_BATCH, max_text_len or placed.max_text_len)

    def _fp8_maker(self, keep: Keep | None) -> Callable[[str, nn.Linear], nn.Module]:
        """What `to_fp8` makes of each linear when 2:4 kernels are asked for: a 2:4 one on cuSPARSELt's FP8
        kernels (`Fp8SparseLinear`) unless they refuse it or `keep` finds its dense FP8 form faster; else
        `Fp8Linear`. The layers are listed in `sparse_layers` and `dense_layers` (with the reason)."""
        from mfdeploy.runtime.fp8 import Fp8Linear, Fp8SparseLinear

        def make(name: str, linear: nn.Linear) -> nn.Module:
            dense = Fp8Linear(linear)
            if not is_2to4(linear.weight):
                return dense
            try:
                sparse = Fp8SparseLinear(linear)
                with torch.inference_mode():  # a first call: the kernels may refuse a shape only when run
                    sparse(torch.zeros(16, linear.in_features, dtype=torch.bfloat16, device=linear.weight.device))
            except (RuntimeError, ValueError, NotImplementedError) as e:
                self.dense_layers[name] = first_line(e)
                return dense
            if keep is not None and not keep(name, dense, sparse):
                self.dense_layers[name] = "dense is faster at the serving token counts"
                return dense
            self.sparse_layers.append(name)
            return sparse

        return make

    def _chooser(self, adapter: Adapter, max_batch: int, fp8: bool = False) -> Keep:
        """The per-layer decision `sparsify_linears` (or, in FP8, `_fp8_maker`) asks: rows per linear at batch 1
        (each tower run once), timed at batch 1 and `max_batch`; in FP8 the two forms are whole modules."""
        from mfdeploy.runtime.sparse_choice import choose, rows_per_call, time_linear_cuda, time_module_cuda

        model = adapter.model
        param = next(model.parameters())
        size = adapter.image_size
        ids, mask = adapter.tokenize(["a photo of a cat."])
        rows = rows_per_call(model, [
            lambda: adapter.vision_tower()(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)),
            lambda: adapter.text_tower()(ids.to(param.device), mask.to(param.device))])

        def keep(name: str, layer: nn.Module, sparse: Any) -> bool:
            counts = sorted({rows[name], rows[name] * max_batch}) if name in rows else [max_batch]
            if fp8:  # layer: the dense FP8 module; sparse: the 2:4 one
                self.sparse_choice[name] = choose(name, layer, sparse, None, counts, time_module_cuda)
            else:
                assert isinstance(layer, nn.Linear)
                self.sparse_choice[name] = choose(name, layer.weight.detach(), sparse, layer.bias, counts,
                                                  time_linear_cuda)
            return bool(self.sparse_choice[name]["sparse"])

        return keep

    @torch.inference_mode()
    def _capture(self, adapter: Adapter, max_batch: int, max_text_len: int) -> None:
        from mfdeploy.runtime.cuda_graphs import GraphedTower, length_buckets

        pool = torch.cuda.graph_pool_handle()
        dev, dt, size = self._device, self._dtype, adapter.image_size
        fixed = adapter.fixed_text_len
        longest = fixed or max_text_len

        def texts(b: int, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
            ids = torch.ones(b, n or longest, dtype=torch.int64, device=dev)
            return ids, torch.ones_like(ids)

        towers = {
            "vision": (self.vision, lambda b, n: (torch.zeros(b, 3, size, size, device=dev, dtype=dt),), None),
            "text": (self.text, texts, None if fixed else length_buckets(max_text_len)),
        }
        for name, (tower, example, lengths) in towers.items():
            log.info("capturing CUDA graphs of the %s tower (batch up to %d%s)", name, max_batch,
                     f", text length up to {max_text_len}" if lengths else "")
            graphed = GraphedTower(tower, example, max_batch, lengths, pool=pool)
            if graphed.captured:
                self.graphs[name] = f"{len(graphed.graphs)} graphs"
                setattr(self, name, graphed)
            else:
                self.graphs[name] = f"eager: {graphed.reason}"
                log.warning("the %s tower runs eagerly: its CUDA graph capture failed (%s)", name, graphed.reason)

    def time_call(self, call: Callable[[], Any]) -> float:
        """The GPU's time from the input's copy in to the embeddings' copy out (`cuda_event_seconds`)."""
        return cuda_event_seconds(call, self._device)


__all__ = ["SPARSE_KERNELS", "TorchCudaRunner", "cuda_event_seconds", "cuda_unavailable", "is_2to4", "sparsify_linears"]
