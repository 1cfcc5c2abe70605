"""The optional packages (pip extras), and which command options need them: checked before the first step.

`pip install mfdeploy` brings everything the CPU pipeline uses. Two extras add the rest: `[modelopt]`
(NVIDIA ModelOpt's ONNX quantizer, for TensorRT INT8/FP8 towers) and `[gpu]` (TensorRT, ONNX Runtime's CUDA
build). A command whose options will need one checks it before it starts (`require`; the CLI does it for
every verb), so a missing package fails at once in one line that names the extra, not minutes into a build.
Only `importlib.util.find_spec` is used: nothing is imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from mfdeploy.errors import UserError


@dataclass(frozen=True)
class Extra:
    """A pip extra of mfdeploy: what it provides, and the modules that must then be importable."""

    name: str
    provides: str
    modules: tuple[str, ...]


@dataclass(frozen=True)
class Need:
    """A command option that needs an extra when it has `value`: `quantize --target trt` needs `[modelopt]`."""

    command: str
    option: str  # the command's parameter name
    value: Any
    flag: str  # as the user writes it
    extra: str


EXTRAS = {
    # what ModelOpt's ONNX quantizer imports (`from modelopt.onnx.quantization import quantize`), all in the extra
    "modelopt": Extra("modelopt", "NVIDIA ModelOpt's ONNX quantizer",
                      ("modelopt", "onnx_graphsurgeon", "onnxslim", "lief", "ml_dtypes")),
    "gpu": Extra("gpu", "TensorRT", ("tensorrt",)),
}

# Every option that needs an optional package. Where a package is missing by design the command says so
# instead of failing (`engine` and `build` print the trtexec commands, `bench` lists the backend as
# unavailable with the reason): those are not here.
NEEDS = (
    Need("build", "int8", True, "--int8", "modelopt"),  # onnx_qdq/ (TensorRT INT8) is part of every --int8 build
    Need("quantize", "target", "trt", "--target trt", "modelopt"),
    Need("serve", "backend", "trt", "--backend trt", "gpu"),
)


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    absent = []
    for module in EXTRAS[extra].modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken install: as good as absent
            found = False
        if not found:
            absent.append(module)
    return absent


def require(command: str, **options: Any) -> None:
    """Refuse, before any work, options of `command` whose optional packages are not installed.

    Args:
        command: the CLI verb (`build`, `quantize`, ...).
        **options: its options by parameter name; those the table does not name are ignored.

    Raises:
        UserError: `build --int8 needs NVIDIA ModelOpt's ONNX quantizer, which is not installed (no module
            'modelopt'): pip install 'mfdeploy[modelopt]'`.
    """
    for need in NEEDS:
        if need.command != command or options.get(need.option) != need.value:
            continue
        absent = missing(need.extra)
        if absent:
            extra = EXTRAS[need.extra]
            raise UserError(f"{command} {need.flag} needs {extra.provides}, which is not installed (no module "
                            f"{absent[0]!r}): pip install 'mfdeploy[{extra.name}]'")
