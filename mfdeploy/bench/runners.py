"""The runners a bench run opens (one per variant of a backend, each failure a row), and their precision.

`--precision` sets OpenVINO's inference precision and `--dtype` the torch
backends' (each takes the values it runs: `DTYPES_BY_BACKEND`); a runner computing in less than fp32 has passed the
precision gate against the fp32 towers (`mfdeploy.runtime.gate`) before it
is timed, and a refused one becomes a row with the cosines that refused it.
Every timed row says the precision that actually ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mfdeploy.errors import UserError
from mfdeploy.runtime.base import BackendUnavailable, Runner
from mfdeploy.runtime.build_dir import BuildDir
from mfdeploy.runtime.registry import make_runner
from mfdeploy.runtime.torch_runner import DTYPES_BY_BACKEND

# option -> (the backends it applies to, how it is checked)
TORCH_BACKENDS = tuple(DTYPES_BY_BACKEND)  # the torch runners: each takes --dtype and --compile
PRECISION_BACKENDS = {"--precision": ("openvino",), "--dtype": TORCH_BACKENDS, "--compile": TORCH_BACKENDS}


def check_precision_options(names: Sequence[str], precision: str | None, dtype: str | None,
                            compile: bool = False) -> None:
    """Refuse a bad `--precision`/`--dtype`, or one (or `--compile`) given for a run that times no backend it
    applies to.

    Raises:
        UserError: in one line.
    """
    from mfdeploy.runtime.openvino_runner import check_precision

    if precision is not None:
        check_precision(precision)
    if dtype is not None:
        from mfdeploy.runtime.torch_runner import check_backend_dtype

        check_backend_dtype(dtype, list(names))
    for flag, value in (("--precision", precision), ("--dtype", dtype), ("--compile", compile or None)):
        applies = PRECISION_BACKENDS[flag]
        if value is not None and not set(applies) & set(names):
            what = "" if value is True else f" {value}"
            raise UserError(f"{flag}{what}: it applies to the {' and '.join(applies)} backends, which this "
                            f"run does not time (add one to --backends)")


def open_runners(build: BuildDir, name: str, variants: list[str], towers: list[str], threads: int, max_batch: int,
                 text_len: int, rows: list[dict], precision: str | None = None,
                 dtype: str | None = None, compile: bool = False, cuda_graphs: bool = True) -> dict[str, Runner]:
    """Runners per variant; an unavailable or refused variant becomes a row (never dropped silently)."""
    from mfdeploy.runtime.gate import GateRefused

    runners: dict[str, Runner] = {}
    for variant in variants:
        try:
            runners[variant] = make_runner(
                name, build, variant=variant, threads=threads, towers=towers, max_batch=max_batch,
                max_text_len=text_len,
                spin=len(variants) == 1,  # sessions taking turns must not spin against each other
                precision=precision if name == "openvino" else None,
                dtype=dtype if dtype in DTYPES_BY_BACKEND.get(name, ()) else None,
                compile=compile and name in PRECISION_BACKENDS["--compile"], cuda_graphs=cuda_graphs,
            )
        except GateRefused as e:  # this variant's towers only: another variant may pass
            rows.append({"backend": name, "variant": variant, "status": "unavailable", "reason": str(e)})
        except BackendUnavailable as e:
            if variant == "pruned":
                rows.append({"backend": name, "status": "unavailable", "reason": str(e)})
                break  # the dense variant would fail the same way
            rows.append({"backend": name, "variant": variant, "status": "unavailable", "reason": str(e)})
    return runners


def precision_fields(runner: Runner, tower: str) -> dict[str, Any]:
    """What a timed row says of its precision: what ran, and the gate's cosine where one was passed."""
    gate = getattr(runner, "gate", None) or {}
    fields = {"precision": runner.tower_precision(tower), "gate_min_cosine": (gate.get(tower) or {}).get("min_cosine")}
    compiled = getattr(runner, "compiled_with", None)
    if compiled:  # torch.compile: which mode, and where its cache is
        fields["compiled"] = compiled
    linears = getattr(runner, "linears", None)
    if linears:  # the eager float32 torch towers on the CPU: their linear layers run through oneDNN's GEMM
        fields["linears"] = linears
    choice = getattr(runner, "sparse_choice", None)
    if choice:  # torch-cuda-sparse: how many 2:4 linears timed faster sparse than dense (the rest run dense)
        from mfdeploy.runtime.sparse_choice import summary

        fields["sparse_linears"] = summary(choice)
    graphs = getattr(runner, "graphs", None)
    if graphs and tower in graphs:  # torch-cuda: "N graphs", or "eager: why the capture failed"
        fields["cuda_graphs"] = graphs[tower]
    return fields


__all__ = ["check_precision_options", "open_runners", "precision_fields"]
