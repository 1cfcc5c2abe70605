"""`--compile`: the torch backends' towers through torch.compile, on the CPU and the bundled model (issue 30)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mfdeploy
from mfdeploy.bench import run_bench
from mfdeploy.runtime.compiled import Tower
from mfdeploy.runtime.torch_runner import TorchRunner
from mfdeploy.server import ServeConfig

TEXTS = (["a red circle."], ["a big blue square on the left.", "a small green triangle at the top right."],
         ["a star."] * 5)


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.mark.slow
def test_compiled_towers_match_eager_and_compile_only_at_start_up():
    """The bundled model's towers, compiled: the eager embeddings (atol 1e-5) at batch sizes 1, 3 and 5 and
    three text lengths, and no graph compiled after the runner is built (start-up compiled every shape kind)."""
    adapter = mfdeploy.load()
    eager = TorchRunner(adapter, threads=2)
    runner = TorchRunner(adapter, threads=2, compile=True)
    assert runner.compiled_with is not None
    assert runner.compiled_with.startswith("inductor, mode default, freezing=True, cpp_wrapper=True, "
                                           "cpp.enable_concat_linear=True, module guards off, cache ")
    assert Path(runner.compiled_with.split("cache ", 1)[1]).is_dir()
    graphs = _unique_graphs()
    rng = np.random.default_rng(0)
    for batch in (1, 3, 5):
        pixels = rng.standard_normal((batch, 3, adapter.image_size, adapter.image_size), dtype=np.float32)
        got, want = runner.embed_images(pixels), eager.embed_images(pixels)
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    lengths = set()
    for texts in TEXTS:
        ids, mask = (t.numpy() for t in adapter.tokenize(texts))
        lengths.add(ids.shape[1])
        got, want = runner.embed_texts(ids, mask), eager.embed_texts(ids, mask)
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    assert len(lengths) == 3  # the text axis really varied
    assert _unique_graphs() == graphs, "a call after start-up compiled a new graph"
    # the towers the adapter shares with other runners are untouched modules, not compiled wrappers
    assert not isinstance(adapter.vision_tower(), torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.slow
def test_bench_rows_say_the_towers_were_compiled(tiny_build):
    """The shared tiny build (bench reads it and, write=False, writes nothing): how it was pruned does not matter
    to the rows' "compiled" field, so no build of its own."""
    rows = run_bench(tiny_build, backends=["torch"], towers=["text"], batch_sizes=[2], dense=False, write=False,
                     warmup=1, iters=2, min_time=0.0, threads=1, compile=True)
    timed = [r for r in rows if "throughput" in r]
    assert timed and all(r["compiled"].startswith("inductor, mode default, freezing=True") for r in timed)


def test_compile_is_a_torch_backend_option(tmp_path):
    assert ServeConfig(build_dir=tmp_path, backend="torch", compile=True).validate().runner_options() == \
        {"compile": True}
    assert ServeConfig(build_dir=tmp_path, backend="torch").validate().runner_options() == {}


def _compile_on_cpu(tower: torch.nn.Module) -> Tower:
    """A bf16 toy tower (32 input features) compiled as the runner compiles a CPU tower, inductor's caches off (a
    cached graph would skip the passes the tests count)."""
    from torch._inductor import config as inductor_config

    from mfdeploy.runtime.compiled import compile_tower, settings_for

    mode, config = settings_for(torch.device("cpu"))
    with inductor_config.patch(force_disable_caches=True):
        return compile_tower(tower, lambda b: (torch.randn(b, 32, dtype=torch.bfloat16),), [(0, 0)], mode, config,
                             "test")


def test_cpu_compile_freezes_the_weights_into_packed_gemms():
    """On the CPU, inductor's freezing is on while a tower compiles (set as config, not as a torch.compile
    option, which inductor ignores for freezing): its linears become oneDNN GEMMs over prepacked weights."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    tower = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)).eval()
    tower = tower.to(torch.bfloat16).requires_grad_(False)
    torch._dynamo.reset()
    counters.clear()
    compiled = _compile_on_cpu(tower)
    assert counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"] >= 2, dict(counters["inductor"])
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.allclose(compiled(x).float(), tower(x).float(), atol=2e-2)
    assert not inductor_config.freezing  # the setting was scoped to the compilation


class _Attention(torch.nn.Module):
    """Three linears reading one input (q, k, v) and one after them: what concat-linear fuses."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(32, 32) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.q(x) * self.k(x) + self.v(x))


def test_cpu_compile_fuses_shared_input_linears():
    """The runner's CPU settings: q, k and v become one prepacked GEMM (2 packed, not 4); batch 1 and batch 3 run
    their own graphs, each with eager's outputs, and neither compiles again."""
    from torch._dynamo.utils import counters

    tower = _Attention().eval().to(torch.bfloat16).requires_grad_(False)
    torch._dynamo.reset()
    counters.clear()
    compiled = _compile_on_cpu(tower)
    # one pack per GEMM: the batch-2 graph and the batch-1 graph each hold 2 (q|k|v concatenated, o)
    assert counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"] == 4, dict(counters["inductor"])
    graphs = _unique_graphs()
    with torch.inference_mode():
        for batch in (1, 3):
            x = torch.randn(batch, 32, dtype=torch.bfloat16)
            got = compiled(x)
            assert got.shape == (batch, 32)
            assert torch.allclose(got.float(), tower(x).float(), atol=3e-2)
    assert _unique_graphs() == graphs


def test_two_compiled_towers_in_one_process_each_run_their_own_weights():
    """Two compiled copies of one class in one process (bench compiles the dense and the pruned model) each give
    their own module's outputs. With frozen weights the runner drops dynamo's module guards, which told the copies
    apart, so each copy is compiled through a function of its own (its own code object, so dynamo never looks one
    copy's call up among the other's graphs)."""
    torch._dynamo.reset()
    towers = [_Attention().eval().to(torch.bfloat16).requires_grad_(False) for _ in range(2)]
    compiled = [_compile_on_cpu(t) for t in towers]
    assert not any(isinstance(c, torch.nn.Module) for c in compiled)  # the guard-free path was taken
    codes = [c.__wrapped__.__code__ for c in compiled]  # type: ignore[attr-defined]  # what dynamo compiled
    assert codes[0] is not codes[1]
    with torch.inference_mode():
        for batch in (1, 3):
            x = torch.randn(batch, 32, dtype=torch.bfloat16)
            want = [t(x).float() for t in towers]
            assert (want[0] - want[1]).abs().max() > 0.1  # the two towers differ
            for c, w in zip(compiled, want):
                assert torch.allclose(c(x).float(), w, atol=3e-2)


class _Breaks(torch.nn.Module):
    """A tower dynamo cannot hold in one graph (a graph break between its two linears)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        torch._dynamo.graph_break()
        return self.b(y)


def test_a_tower_that_breaks_into_graphs_keeps_its_module_guards():
    """A graph break would put the tower class's own frames in dynamo's cache, shared by every copy: such a tower
    is compiled as a module with its guards, and two copies still give their own outputs."""
    torch._dynamo.reset()
    towers = [_Breaks().eval().to(torch.bfloat16).requires_grad_(False) for _ in range(2)]
    compiled = [_compile_on_cpu(t) for t in towers]
    assert all(isinstance(c, torch._dynamo.eval_frame.OptimizedModule) for c in compiled)
    with torch.inference_mode():
        for batch in (1, 3):
            x = torch.randn(batch, 32, dtype=torch.bfloat16)
            for c, t in zip(compiled, towers):
                assert torch.allclose(c(x).float(), t(x).float(), atol=3e-2)
