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
    """A command option that needs an extra when it takes one of `values`: `quantize --target trt` needs
    `[modelopt]`."""

    command: str
    option: str  # the command's parameter name
    flag: str  # as the user writes it
    values: tuple[Any, ...]  # True: a flag that is set
    extra: str

    def written(self, value: Any) -> str:
        """The option as the user wrote it: `--int8`, `--target trt`."""
        return self.flag if value is True else f"{self.flag} {value}"


EXTRAS = {
    # what ModelOpt's ONNX quantizer imports (`from modelopt.onnx.quantization import quantize`), all in the extra
    "modelopt": Extra("modelopt", "NVIDIA ModelOpt's ONNX quantizer",
                      ("modelopt", "onnx_graphsurgeon", "onnxslim", "lief", "ml_dtypes")),
    "gpu": Extra("gpu", "TensorRT", ("tensorrt",)),
    "openvino": Extra("openvino", "OpenVINO", ("openvino",)),
}

# Every option that needs an optional package. Where a package is missing by design the command says so
# instead of failing (`engine` and `build` print the trtexec commands, `bench` lists the backend as
# unavailable with the reason): those are not here. ONNX Runtime's CUDA provider (`[gpu]`'s onnxruntime-gpu)
# installs no module of its own: the runners ask ONNX Runtime before they load anything.
NEEDS = (
    Need("quantize", "target", "--target", ("trt",), "modelopt"),
    Need("serve", "backend", "--backend", ("trt",), "gpu"),
    Need("serve", "backend", "--backend", ("openvino", "openvino-int8"), "openvino"),
    Need("eval", "backend", "--backend", ("openvino", "openvino-int8"), "openvino"),
    Need("tune", "backend", "--backend", ("openvino", "openvino-int8"), "openvino"),
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
        UserError: `quantize --target trt needs NVIDIA ModelOpt's ONNX quantizer, which is not installed (no
            module 'modelopt'): pip install 'mfdeploy[modelopt]'`.
    """
    for need in NEEDS:
        value = options.get(need.option)
        if need.command != command or value not in need.values:
            continue
        absent = missing(need.extra)
        if absent:
            extra = EXTRAS[need.extra]
            raise UserError(f"{command} {need.written(value)} needs {extra.provides}, which is not installed (no "
                            f"module {absent[0]!r}): pip install 'mfdeploy[{extra.name}]'")
