"""Round 13 b: tune's INT8 builds quantize only the towers its backend serves; tune counts its calibration pairs
once; MoPE's cache keys name what decides the floats (CPU, threads, torch's build, the CUDA device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mfdeploy.pipelines.build as build
from mfdeploy.errors import UserError
from mfdeploy.pipelines.build_state import BuildConfig, BuildState
from mfdeploy.pruning import PruneConfig
from mfdeploy.tuning import measure, search
from mfdeploy.tuning.config import TuneConfig
from mfdeploy.tuning.records import Constraints
from mfdeploy.tuning.space import Candidate, Space

DENSE = {"tasks": {"a": 0.9, "b": 0.9}}


@pytest.fixture()
def quantized(monkeypatch):
    """`quantize_build` replaced by a recorder of the targets it is asked for (it makes no folder); `present`:
    whether NVIDIA ModelOpt counts as installed (`mfdeploy.extras.missing`)."""
    import mfdeploy.extras as extras
    import mfdeploy.quantize.build as qbuild

    asked: list[tuple[str, ...]] = []
    present = [True]
    real_missing = extras.missing

    def missing(extra: str) -> list[str]:
        if extra == "modelopt":
            return [] if present[0] else ["modelopt"]
        return real_missing(extra)

    def quantize_build(adapter, build_dir, calib, calib_samples=128, warn=None, scheme="auto", targets=()):
        asked.append(tuple(targets))
        return {}

    monkeypatch.setattr(extras, "missing", missing)
    monkeypatch.setattr(qbuild, "quantize_build", quantize_build)
    build._SAID.clear()
    return asked, present


def quantize_stage(tmp_path: Path, **cfg) -> BuildState:
    state = BuildState(BuildConfig(prune=PruneConfig(ratio=0.5), int8=True, **cfg), tmp_path, None)
    state._models["pruned"] = object()  # the stage hands it to quantize_build (faked) only
    state.records["prune"] = {}
    state.records["quantize"] = build.quantize(state)
    return state


def test_the_quantize_stage_makes_the_targets_asked_for(tmp_path, quantized):
    asked, present = quantized
    state = quantize_stage(tmp_path)  # `build --int8` with ModelOpt: both folders, as before
    assert asked == [("ort", "trt")] and "quantize skipped" not in state.records
    state = quantize_stage(tmp_path, int8_targets=("ort",))  # ModelOpt there, onnx_qdq/ not asked for: not made
    assert asked[-1] == ("ort",) and "quantize skipped" not in state.records
    present[0] = False
    state = quantize_stage(tmp_path, int8_targets=("ort",))  # not asked for: no word of ModelOpt missing
    assert asked[-1] == ("ort",) and "quantize skipped" not in state.records
    state = quantize_stage(tmp_path)  # asked for without ModelOpt: skipped, and recorded why
    assert asked[-1] == ("ort",) and "not installed" in state.records["quantize skipped"]["onnx_qdq"]


def test_int8_targets_that_name_no_quantize_target_are_one_line(tmp_path):
    cfg = BuildConfig(prune=PruneConfig(ratio=0.5), out=tmp_path / "b", int8=True, int8_targets=("tensorrt",))
    with pytest.raises(UserError, match=r"int8 targets \['tensorrt'\]: expected one or more of ort, trt"):
        build.run_build(cfg)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_tune_int8_builds_make_only_the_towers_their_backend_serves(tmp_path, quantized, monkeypatch, backend):
    """The real build of a tune's INT8 candidate (bundled model) with ModelOpt present: quantize is asked for
    onnx_int8/ alone, the folder both ONNX backends serve int8 from, not TensorRT's onnx_qdq/ that no trial
    measures."""
    asked, _ = quantized
    monkeypatch.setattr(measure, "evaluate", lambda *a, **k: DENSE)  # the first rung's screen
    monkeypatch.setattr(measure, "dense_onnx", lambda out, model: out)  # dense towers: not needed to quantize
    monkeypatch.setattr(measure, "link_tree", lambda source, dest: None)
    cfg = TuneConfig(out=tmp_path, backend=backend, constraints=Constraints(max_drop=100.0))
    space = Space(name="t", methods=("magnitude",), ratios=(0.5,), precisions=("fp32", "int8"), calib_samples=8)
    found = search.Search(cfg, space, backend, "shapes", tmp_path, [], say=lambda m: None)
    found.dense = {"screen": DENSE, "full": DENSE}
    out = found._build(Candidate("magnitude", 0.5, "int8", "uniform"), {})
    assert asked == [("ort",)]
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["quantize_skipped"] is None  # nothing asked for was left out
    assert not (out / "onnx_qdq").exists()


# ---- tune counts its calibration pairs once ------------------------------------------------------------------------


@pytest.fixture()
def counted(monkeypatch):
    """Builds, evaluations and timings faked (each build records the calibration pairs it was given); calls to
    `measure.calib_samples` counted."""
    calls = {"calib_samples": 0}
    builds: list[int] = []
    real = measure.calib_samples

    def calib_samples(calib, space):
        calls["calib_samples"] += 1
        return real(calib, space)

    def run_build(cfg, extra=()):
        builds.append(cfg.prune.calib_samples)
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "build.json").write_text(json.dumps({"model": "bundled", "artifacts": {}}))
        return {}

    speed = {"speedup": 1.5, "latency_ms": 2.0, "dense_latency_ms": 3.0, "towers": {}, "shared_with": None}
    monkeypatch.setattr(measure, "calib_samples", calib_samples)
    monkeypatch.setattr(build, "run_build", run_build)
    monkeypatch.setattr(measure, "evaluate", lambda *a, **k: DENSE)
    monkeypatch.setattr(measure, "time_candidate", lambda *a, **k: dict(speed))
    return calls, builds


def test_a_search_counts_its_calibration_pairs_once_for_every_build(tmp_path, counted):
    calls, builds = counted
    cfg = TuneConfig(out=tmp_path, backend="torch", constraints=Constraints(max_drop=100.0))
    space = Space(name="t", methods=("magnitude", "wanda"), ratios=(0.25, 0.5), precisions=("fp32",),
                  calib_samples=12)
    found = search.Search(cfg, space, "torch", "shapes", tmp_path, [], say=lambda m: None)
    found.dense = {"screen": DENSE, "full": DENSE}
    for cand in space.candidates():
        found._add(found._measure(cand))
    assert len(builds) == 4 and builds == [12] * 4  # what each prune was given: unchanged
    assert calls["calib_samples"] == 1
    given = search.Search(cfg, space, "torch", "shapes", tmp_path / "x", [], say=lambda m: None, calib_samples=7)
    given.dense = found.dense
    given._measure(Candidate("magnitude", 0.25, "fp32", "uniform"))
    assert builds[-1] == 7 and calls["calib_samples"] == 1  # a count passed in is the one used


def test_a_tune_counts_its_calibration_pairs_once(tmp_path, counted):
    """`run_tune` counts the pairs in its data checks and every build of the search takes that count."""
    from mfdeploy.tuning.run import run_tune

    calls, builds = counted
    (tmp_path / "space.toml").write_text('methods = ["magnitude", "wanda"]\nratios = [0.25, 0.5]\n'
                                         'precisions = ["fp32"]\ndistill_steps = [0]\n[calibration]\nsamples = 12\n')
    result = run_tune(TuneConfig(out=tmp_path / "run", backend="torch", space=str(tmp_path / "space.toml"),
                                 constraints=Constraints(max_drop=100.0)), say=lambda m: None)
    assert len(result.trials) == 4 and all(r["state"] == "complete" for r in result.trials)
    assert builds == [12] * 4 and calls["calib_samples"] == 1


# ---- MoPE's cache keys name what decides the floats ----------------------------------------------------------------


def cache_key(model: torch.nn.Module) -> dict:
    from mfdeploy.pruning.methods.mope_cache import ScoreCache

    return ScoreCache.base_of(model, [], "clip", 64)


CHANGES = {  # what differs on another machine or run, and how to fake it here
    "cpu_capability": lambda mp: mp.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT"),
    "cpu": lambda mp: mp.setattr("mfdeploy.platform.cpu_description", lambda: "Other CPU (avx2)"),
    "threads": lambda mp: mp.setattr(torch, "get_num_threads", lambda: 977),
    "torch_build": lambda mp: mp.setattr(torch.__config__, "show", lambda: "PyTorch built with: OpenBLAS"),
    "matmul_precision": lambda mp: mp.setattr(torch, "get_float32_matmul_precision", lambda: "medium"),
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_mope_cache_key_changes_with_each_thing_that_decides_the_floats(monkeypatch, tmp_path, field):
    from mfdeploy.pruning.methods.mope_cache import VERSION, ScoreCache

    model = torch.nn.Linear(3, 2)
    here = cache_key(model)
    assert here == cache_key(model) and here["version"] == VERSION >= 2  # the same environment: the same key
    stored = ScoreCache(tmp_path, here)
    stored.put({"layer": 0}, {"heads": [0.5]})
    assert ScoreCache(tmp_path, cache_key(model)).get("width_layers", {"layer": 0}, {"heads": 1}) == {"heads": [0.5]}
    with monkeypatch.context() as mp:
        CHANGES[field](mp)
        there = cache_key(model)
    assert there[field] != here[field] and {k for k in here if here[k] != there[k]} == {field}
    elsewhere = ScoreCache(tmp_path, there)
    assert elsewhere.get("width_layers", {"layer": 0}, {"heads": 1}) is None  # scored again, not read
    assert elsewhere.counts["width_layers"] == {"from_cache": 0, "scored": 1}


def test_the_thread_count_really_set_changes_the_key():
    model = torch.nn.Linear(3, 2)
    before = torch.get_num_threads()
    here = cache_key(model)
    try:
        torch.set_num_threads(before + 1)
        there = cache_key(model)
    finally:
        torch.set_num_threads(before)
    assert there["threads"] == before + 1 != here["threads"] and cache_key(model) == here


def test_a_mope_cache_key_on_cuda_names_the_device_and_its_math(monkeypatch):
    from mfdeploy.pruning.methods.mope_cache import environment

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    cuda = environment(torch.device("cuda"))
    assert cuda["device"] == "cuda" and cuda["device_name"] == "NVIDIA H100 80GB HBM3"
    assert {"cuda", "cudnn", "tf32_matmul", "tf32_cudnn"} <= set(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    assert environment(torch.device("cuda"))["device_name"] != cuda["device_name"]
    matmul = torch.backends.cuda.matmul  # a module of properties: set and put back by hand
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = not before
        assert environment(torch.device("cuda"))["tf32_matmul"] != cuda["tf32_matmul"]
    finally:
        matmul.allow_tf32 = before
    assert "device_name" not in environment(torch.device("cpu"))
