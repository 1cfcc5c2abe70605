"""`--compile`: the torch backends' towers through `torch.compile` (TorchInductor), compiled once at start-up.

Each tower is compiled and run on example inputs before the runner is handed
out, so no request or timed call pays for a compilation: a batch of 2 with
the batch axis marked dynamic (one graph for every batch size above 1), then
a batch of 1 (dynamo specialises size 1 into a graph of its own). A text
tower whose length varies (CLIP: padded to the longest text of a batch) has
its length axis marked dynamic too; a fixed-length one (SigLIP) does not.

On the CPU, inductor's default mode with freezing on: the weights become
constants of the graph, which inductor folds and prepacks for oneDNN's
GEMMs (bf16 ones included) once, at compile time. That is the setting
PyTorch documents for CPU inference. Two more settings cut the work
around the GEMMs: the C++ wrapper (`cpp_wrapper`: the graph's calls made
from C++, not from a generated Python function) and one GEMM for linears
that share their input (`cpp.enable_concat_linear`: q, k and v become
one). With the weights frozen into the graph, dynamo's guards on the
tower's modules protect nothing, yet they are checked on every call. The
runner drops them (`guard_filter_fn=skip_guard_on_all_nn_modules_unsafe`)
only together with what made dropping them unsafe: dynamo keeps its graphs
per code object, so two compiled copies of one tower class (bench compiles
the dense and the pruned model in one process) would find each other's
graphs, and with no module guard one copy ran the other's. Each frozen
tower is therefore compiled through a function of its own (`own_entry`: a
fresh code object that calls that tower alone) and into one graph
(`fullgraph=True`), so no frame of the shared class is ever looked up. A
tower that does not compile into one graph keeps its module guards.

Measured in fresh processes against ONNX Runtime fp32 in the same process
(`benchmarks/compile_settings.py --pairs 2 --variants
freezing,module-guards,runner`: ViT-B/32 in bf16, 2 threads, an AMD EPYC
family 26, medians of two processes each): the runner reached 1.89x at text
batch 1, 1.93x at text batch 8, 1.98x at vision batch 1 and 1.81x at vision
batch 8; with the module guards kept, 1.70x, 1.81x, 1.89x and 1.72x; with
freezing alone, 1.57x, 1.82x, 1.82x and 1.79x. Profiled alone, the guard
check took 0.28 ms of a 4 ms text call at batch 1, 0.08 ms without the module
guards. Two compiled copies of a tower in one process cannot be compared:
dynamo looks every call up among both copies' graphs.

The packed copies sit beside the module's own weights, so a compiled CPU tower
holds its weights twice; the autotuning modes are left out (they spend
minutes per shape on a few cores, and gained nothing in one run on
ViT-B/32 here). On CUDA, "max-autotune-no-cudagraphs", since the runner captures its own CUDA
graphs. Inductor keeps what it compiled in its cache directory
(`TORCHINDUCTOR_CACHE_DIR`, else a folder under the temp dir), which the
runner reports. On CUDA a later start-up with the same model and shapes
reads its graphs from there. On the CPU it cannot: inductor's FX graph
cache does not store a graph holding oneDNN's prepacked weights ("mkldnn
tensors unpickleable"), so every start-up compiles again (about 2 minutes
for ViT-B/32 on 2 cores). Turning prepacking off (`cpp.weight_prepack`)
lets the cache serve the graphs (40 s instead of 120 s) but made the calls
9-23% slower (`benchmarks/compile_settings.py --variants runner,no-prepack`,
benchmarks/results/compile_prepack.md), so the runner keeps it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from mfdeploy.errors import first_line
from mfdeploy.runtime.base import BackendUnavailable

log = logging.getLogger(__name__)

CPU_MODE = "default"
CPU_CONFIG = {"freezing": True, "cpp_wrapper": True, "cpp.enable_concat_linear": True}  # inductor's, module doc
CUDA_MODE = "max-autotune-no-cudagraphs"
EXAMPLE_TEXT_LEN = 8  # the example length of a variable-length text tower (marked dynamic: any length runs)


def settings_for(device: torch.device) -> tuple[str, dict[str, object]]:
    """Inductor's mode for towers on `device`, and the inductor config set while they compile (module doc).

    The config is patched around the compiling calls, not passed as `torch.compile(options=...)`: inductor
    reads `freezing` outside the options it is given, so as an option it would be silently ignored."""
    return (CUDA_MODE, {}) if device.type == "cuda" else (CPU_MODE, dict(CPU_CONFIG))


def describe(mode: str, config: dict[str, object]) -> str:
    """`settings_for`'s result in words, for the runner's report, e.g. "mode default, freezing=True, ..."."""
    return ", ".join([f"mode {mode}", *(f"{k}={v}" for k, v in config.items())])


def cache_dir() -> str:
    """Where inductor keeps compiled kernels (`TORCHINDUCTOR_CACHE_DIR`, else its default under the temp dir)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

    return str(inductor_cache_dir())


Tower = Callable[..., torch.Tensor]  # a tower module, or the compiled function standing for it


def own_entry(tower: torch.nn.Module, name: str) -> Tower:
    """A function that calls `tower` and nothing else, with a code object no other function has (module doc)."""

    def call(*inputs: torch.Tensor) -> torch.Tensor:
        return tower(*inputs)

    call.__code__ = call.__code__.replace(co_name=f"{name}_tower")  # replace() always makes a new code object
    return call


def compile_tower(tower: torch.nn.Module, examples: Callable[[int], Sequence[torch.Tensor]],
                  dynamic: Sequence[tuple[int, int]], mode: str, config: dict[str, object], name: str) -> Tower:
    """`tower` compiled, and already run on batches of 2 and 1, so that no later call compiles.

    Args:
        tower: the module (called with positional tensors).
        examples: batch size -> example inputs of the tower.
        dynamic: (input index, axis) pairs whose sizes vary between calls: the batch axis, a text length.
        mode: inductor's mode (`settings_for`).
        config: inductor config patched in while the examples compile (`settings_for`).
        name: the tower, for messages.

    Returns:
        What to call instead of the tower: with frozen weights, a function of the tower's own compiled in one
        graph without module guards; else (or where the tower breaks into several graphs) the compiled module.

    Raises:
        BackendUnavailable: torch.compile failed on this machine (no C++ compiler, an unsupported op...), in
            one line naming the tower and the cause.
    """
    start = time.perf_counter()
    try:
        compiled = _compile_frozen(tower, examples, dynamic, mode, config, name) if config.get("freezing") else None
        compiled = compiled or _warm(torch.compile(tower, mode=mode), examples, dynamic, config)
    except Exception as e:  # dynamo and inductor raise many kinds (BackendCompilerFailed, CalledProcessError...)
        raise BackendUnavailable(f"--compile: torch.compile could not compile the {name} tower "
                                 f"({type(e).__name__}: {first_line(e)}); run without --compile") from None
    log.info("compiled the %s tower with torch.compile (inductor, %s) in %.1f s; cache %s", name,
             describe(mode, config), time.perf_counter() - start, cache_dir())
    return compiled


def _compile_frozen(tower: torch.nn.Module, examples: Callable[[int], Sequence[torch.Tensor]],
                    dynamic: Sequence[tuple[int, int]], mode: str, config: dict[str, object],
                    name: str) -> Tower | None:
    """A tower with frozen weights through a function of its own, in one graph, without module guards (module
    doc); None where it breaks into several graphs (their frames would be the tower class's, shared)."""
    from torch._inductor import list_mode_options  # torch.compile takes a mode or options, not both

    options = {**list_mode_options(mode), "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    try:
        return _warm(torch.compile(own_entry(tower, name), options=options, fullgraph=True), examples, dynamic, config)
    except torch._dynamo.exc.Unsupported as e:
        log.info("the %s tower does not compile into one graph (%s): its module guards stay", name, first_line(e))
        return None


def _warm(compiled: Tower, examples: Callable[[int], Sequence[torch.Tensor]], dynamic: Sequence[tuple[int, int]],
          config: dict[str, object]) -> Tower:
    """`compiled`, run on a batch of 2 (the `dynamic` axes marked) and one of 1: every graph it needs, compiled."""
    from torch._inductor import config as inductor_config

    with torch.inference_mode(), inductor_config.patch(config):
        for batch in (2, 1):
            inputs = list(examples(batch))
            if batch > 1:
                for index, axis in dynamic:
                    torch._dynamo.mark_dynamic(inputs[index], axis)
            compiled(*inputs)
    return compiled


__all__ = ["CPU_CONFIG", "CPU_MODE", "CUDA_MODE", "Tower", "cache_dir", "compile_tower", "describe", "own_entry",
           "settings_for"]
