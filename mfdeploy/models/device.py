"""`--device` and `--dtype`: where a model runs and in which precision, checked before anything loads."""

from __future__ import annotations

import re

import torch

from mfdeploy.errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DEVICE = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")


def resolve_device(spec: str | None) -> torch.device:
    """`auto` (CUDA when torch sees a GPU, else the CPU), `cpu`, `cuda` or `cuda:N`.

    Raises:
        UserError: a malformed value, or CUDA asked for where torch has none (or not that index).
    """
    spec = (spec or "auto").strip().lower()
    match = _DEVICE.match(spec)
    if match is None:
        raise UserError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto":
        return torch.device("cuda:0" if available else "cpu")
    if not available:
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA GPU"
        raise UserError(f"--device {spec}: no CUDA device here ({why}); use --device cpu")
    index = int(match.group(2) or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: CUDA device {index} does not exist (this machine has "
                        f"{torch.cuda.device_count()})")
    return torch.device("cuda", index)


def resolve_dtype(name: str | None) -> torch.dtype:
    """`float32` (default), `float16` or `bfloat16`.

    Raises:
        UserError: any other name.
    """
    name = (name or "float32").strip().lower()
    if name not in DTYPES:
        raise UserError(f"--dtype {name}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


__all__ = ["DTYPES", "resolve_device", "resolve_dtype"]
