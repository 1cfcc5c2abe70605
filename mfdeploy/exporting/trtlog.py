"""The TensorRT build log: capture it through polygraphy, and read its 2:4 sparsity report."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_ELIGIBLE = re.compile(r"Layers eligible for sparse math:(.*)$")
_PICKED = re.compile(r"picked sparse implementation for layers:(.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_sparsity_log(text: str) -> dict[str, Any]:
    """Layers TensorRT found eligible for 2:4 sparse math, and those it gave a sparse kernel.

    TensorRT reports both once per build, e.g.
    `[I] [TRT] (Sparsity) Layers eligible for sparse math: MatMul_51, Conv_3 + Relu_4` and
    `[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: MatMul_51`.
    Fused layers (`A + B`) count as one layer. `reported` is False when the log holds neither
    line (SPARSE_WEIGHTS was off, or the log was captured above the level TensorRT used).
    """
    found: dict[str, list[str]] = {"eligible": [], "picked_sparse": []}
    reported = False
    for line in _ANSI.sub("", text).splitlines():
        for key, pattern in (("eligible", _ELIGIBLE), ("picked_sparse", _PICKED)):
            m = pattern.search(line)
            if m:
                reported = True
                for name in (n.strip() for n in m.group(1).split(", ")):
                    if name and name not in found[key]:
                        found[key].append(name)
    return {"reported": reported, "n_eligible": len(found["eligible"]),
            "n_picked_sparse": len(found["picked_sparse"]), **found}


@contextmanager
def capture_trt_log() -> Iterator[list[str]]:
    """Collect every TensorRT message (down to VERBOSE) into a list, without printing it.

    Polygraphy hands TensorRT one logger of its own (`get_trt_logger()`), which
    forwards TensorRT INFO to `G_LOGGER.verbose` and VERBOSE to
    `G_LOGGER.extra_verbose`; a second ILogger of ours would not be used, as
    TensorRT keeps the first logger it is given. The sparsity report is INFO in
    some releases and VERBOSE in others, so both levels are kept. G_LOGGER is
    routed through Python logging meanwhile, so nothing floods stdout.
    """
    import logging

    from polygraphy.logger import G_LOGGER

    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    py_logger = logging.getLogger("Polygraphy")
    handler = _Collect(level=1)
    saved_mode, saved_level, saved_propagate = G_LOGGER.use_python_logging_system, py_logger.level, py_logger.propagate
    G_LOGGER.use_python_logging_system = True
    py_logger.addHandler(handler)
    py_logger.setLevel(1)
    py_logger.propagate = False
    try:
        with G_LOGGER.verbosity(G_LOGGER.EXTRA_VERBOSE):
            yield lines
    finally:
        py_logger.removeHandler(handler)
        py_logger.setLevel(saved_level)
        py_logger.propagate = saved_propagate
        G_LOGGER.use_python_logging_system = saved_mode
