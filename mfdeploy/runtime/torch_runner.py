"""PyTorch eager runner over an adapter's towers."""

from __future__ import annotations

import copy

import numpy as np
import torch

from mfdeploy.errors import UserError
from mfdeploy.models.base import Adapter
from mfdeploy.runtime import onednn
from mfdeploy.runtime.base import Runner
from mfdeploy.runtime.compiled import Tower

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # --dtype of the CPU backend
CUDA_DTYPES = {**DTYPES, "float16": torch.float16}  # the torch runner on a CUDA device (`mfdeploy tune` on torch-cuda)
# --dtype of each torch backend (the first: its default)
DTYPES_BY_BACKEND = {"torch": tuple(DTYPES), "torch-cuda": ("float16", "float8"),
                     "torch-cuda-sparse": ("float16", "float8")}
_PRECISIONS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def check_dtype(dtype: str, cuda: bool = False) -> torch.dtype:
    """The torch dtype `--dtype` names (`cuda`: for towers on a CUDA device, which may run float16 too).

    Raises:
        UserError: not one of `DTYPES` (`CUDA_DTYPES`), in one line listing them.
    """
    known = CUDA_DTYPES if cuda else DTYPES
    if dtype not in known:
        gpu = " (float16: on a CUDA device only)" if dtype in CUDA_DTYPES else ""
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(known)}{gpu}")
    return known[dtype]


def check_backend_dtype(dtype: str, backends: list[str]) -> list[str]:
    """The `backends` (torch ones) that take `--dtype dtype`.

    Raises:
        UserError: none of them does: one line with the choices of each torch backend named.
    """
    torch_backends = [b for b in backends if b in DTYPES_BY_BACKEND]
    takers = [b for b in torch_backends if dtype in DTYPES_BY_BACKEND[b]]
    if torch_backends and not takers:
        if len(torch_backends) == 1:
            choices = ", ".join(DTYPES_BY_BACKEND[torch_backends[0]])
        else:
            choices = "; ".join(f"{', '.join(DTYPES_BY_BACKEND[b])} ({b})" for b in torch_backends)
        raise UserError(f"--dtype {dtype}: choose one of {choices}")
    return takers


def _unit_float32(emb: torch.Tensor) -> torch.Tensor:
    """float32 embeddings of norm 1: a half-precision tower's are renormalised after the cast (in fp16 their
    norms are off by up to about 5e-4, measured on an H200)."""
    if emb.dtype == torch.float32:
        return emb
    return torch.nn.functional.normalize(emb.float(), dim=-1)


class TorchRunner(Runner):
    """Eager PyTorch on the model's own device, no autograd; embeddings come back as float32 numpy."""

    name = "torch"

    def __init__(self, adapter: Adapter, device: str | torch.device | None = None, threads: int | None = None,
                 dtype: str | None = None, compile: bool = False, onednn_linear: bool | None = None):
        """Wrap the adapter's two towers.

        Args:
            adapter: a loaded model.
            device: torch device to run on; None runs where the model already is (a model on CUDA stays
                there). A device given explicitly moves the model's towers to it.
            threads: intra-op threads; `torch.set_num_threads` is process-wide,
                so this changes it for every torch user in the process.
            dtype: "float32" or "bfloat16": run in it, on copies of the towers where the model is in another
                dtype (the adapter's own stay as they are: a build's loaded models are shared); None: float32 on
                the CPU, the model's own dtype on a GPU.
            compile: run each tower through `torch.compile`, compiled here for every batch size (and text
                length) before the runner is returned (`mfdeploy.runtime.compiled`).
            onednn_linear: eager float32 towers on the CPU run their linear layers through oneDNN's GEMM, on
                copies that share the weights (`mfdeploy.runtime.onednn`: the same products, rounded differently
                by a few ulps). None: where oneDNN is measured faster than PyTorch's `linear` here (about 2x on
                this project's AMD EPYC); False: never. Compiled towers get oneDNN's GEMMs from inductor instead.

        Raises:
            BackendUnavailable: `compile` and torch.compile failed on this machine (one line naming why).
        """
        if threads:
            torch.set_num_threads(threads)
        vision, text = adapter.vision_tower(), adapter.text_tower()
        if device is not None:
            vision, text = vision.to(device), text.to(device)
        first = next(vision.parameters())
        cuda = first.device.type == "cuda"
        # None: float32 on the CPU, as `--dtype` documents (a checkpoint saved in float16 ran in float16 there, and
        # its dense rows were timed and scored against float32 pruned ones); on a GPU, the model's own dtype
        wanted = check_dtype(dtype, cuda) if dtype is not None else first.dtype if cuda else torch.float32
        if wanted != first.dtype:
            vision, text = copy.deepcopy(vision).to(wanted), copy.deepcopy(text).to(wanted)
        param = next(vision.parameters())
        # what a call runs: the towers, or (--compile) what torch.compile made of them
        self.vision: Tower = vision
        self.text: Tower = text
        self._device, self._dtype = param.device, param.dtype  # inputs follow the weights
        self.device = str(self._device)
        self.precision = _PRECISIONS.get(self._dtype, str(self._dtype))
        self.compiled_with: str | None = None  # "inductor, SETTINGS, GUARDS, cache DIR" once compiled
        self.linears: str | None = None  # "oneDNN GEMM (N layers)" where the eager towers' linears run there
        if compile:
            self._compile(adapter, vision, text)
        elif onednn_linear is not False and onednn.float32_cpu(vision) and onednn.float32_cpu(text) \
                and (onednn_linear or onednn.worth_it()):
            (self.vision, n_vision), (self.text, n_text) = onednn.onednn_copy(vision), onednn.onednn_copy(text)
            self.linears = f"oneDNN GEMM ({n_vision + n_text} layers)"

    def _compile(self, adapter: Adapter, vision: torch.nn.Module, text: torch.nn.Module) -> None:
        """Both towers through `torch.compile`, each already run on every shape kind it will see."""
        from mfdeploy.runtime.compiled import EXAMPLE_TEXT_LEN, cache_dir, compile_tower, describe, settings_for

        (mode, config), size = settings_for(self._device), adapter.image_size
        fixed = adapter.fixed_text_len
        length = fixed or EXAMPLE_TEXT_LEN
        dev, dt = self._device, self._dtype
        self.vision = compile_tower(vision, lambda b: (torch.zeros(b, 3, size, size, device=dev, dtype=dt),),
                                    [(0, 0)], mode, config, "vision")
        text_axes = [(0, 0), (1, 0)] + ([] if fixed else [(0, 1), (1, 1)])  # batch; and length where it varies
        self.text = compile_tower(text, lambda b: (torch.ones(b, length, dtype=torch.int64, device=dev),
                                                        torch.ones(b, length, dtype=torch.int64, device=dev)),
                                  text_axes, mode, config, "text")
        guarded = [name for name, t in (("vision", self.vision), ("text", self.text)) if isinstance(t, torch.nn.Module)]
        guards = f"module guards kept ({', '.join(guarded)})" if guarded else "module guards off"
        self.compiled_with = f"inductor, {describe(mode, config)}, {guards}, cache {cache_dir()}"

    @torch.inference_mode()
    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(pixel_values, device=self._device).to(self._dtype)  # [B, 3, H, W]
        return _unit_float32(self.vision(x)).cpu().numpy()  # the Runner interface returns host arrays

    @torch.inference_mode()
    def embed_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = torch.as_tensor(input_ids, dtype=torch.int64, device=self._device)  # [B, L]
        mask = torch.as_tensor(attention_mask, dtype=torch.int64, device=self._device)
        return _unit_float32(self.text(ids, mask)).cpu().numpy()
