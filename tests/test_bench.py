"""`run_bench` and `mfdeploy bench`: reports with dense and pruned side by side, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import make_build

from mfdeploy.bench import run_bench, time_interleaved
from mfdeploy.cli import main

FAST = dict(warmup=1, iters=2, min_time=0.0, threads=1)


@pytest.fixture(scope="module")
def build_dir(tiny_clip_dir, tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("bench") / "build", tiny_clip_dir)


def _measured(rows):
    return [r for r in rows if "throughput" in r]


def test_run_bench_pruned_and_dense_side_by_side(build_dir, tmp_path):
    rows = run_bench(build_dir, backends=["torch", "ort-cpu", "ort-cuda", "trt"], batch_sizes=[1, 2],
                     json_path=tmp_path / "copy.json", **FAST)
    measured = _measured(rows)
    cells = {(r["backend"], r["tower"], r["batch"], r["variant"]) for r in measured}
    assert cells == {(b, t, n, v) for b in ("torch", "ort-cpu") for t in ("vision", "text") for n in (1, 2)
                     for v in ("pruned", "dense")}
    for r in measured:
        assert r["throughput"] > 0 and 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["pruned_over_dense"] > 0 and r["peak_rss_mb"] > 0 and r["device"] == "cpu"
        assert r["iters"] == 2 and r["threads"] == 1
        assert r["text_len"] == (16 if r["tower"] == "text" else None)
    # the ratio is the pruned row's throughput over the dense row's, on both rows
    by = {(r["backend"], r["tower"], r["batch"], r["variant"]): r for r in measured}
    p, d = by["ort-cpu", "vision", 2, "pruned"], by["ort-cpu", "vision", 2, "dense"]
    assert p["pruned_over_dense"] == pytest.approx(p["throughput"] / d["throughput"]) == d["pruned_over_dense"]
    # backends that cannot run here are rows with a reason, never dropped
    gone = {r["backend"]: r["reason"] for r in rows if r.get("status") == "unavailable"}
    assert set(gone) >= {"trt"} and all(gone.values())
    if "ort-cuda" in gone:
        assert "onnxruntime-gpu" in gone["ort-cuda"] or "CUDA" in gone["ort-cuda"]

    assert json.loads((build_dir / "bench.json").read_text()) == json.loads(json.dumps(rows))
    assert json.loads((tmp_path / "copy.json").read_text()) == json.loads(json.dumps(rows))
    md = (build_dir / "bench.md").read_text()
    assert "| backend | tower | batch |" in md and "pruned/dense" in md and "## Unavailable on this machine" in md
    assert f"{p['pruned_over_dense']:.2f}x" in md and "**trt**" in md and "ru_maxrss" in md
    assert (build_dir / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(build_dir.glob(".bench*"))  # no temporary files left behind


def test_dense_without_onnx_dense_is_reported_with_the_command(build_dir, tmp_path):
    """The runtime never exports: a build without onnx_dense/ times the pruned towers and says how to add it."""
    build = tmp_path / "b"
    shutil.copytree(build_dir, build, ignore=shutil.ignore_patterns("onnx_dense", "bench.*"))
    rows = run_bench(build, backends=["ort-cpu"], towers=["vision"], batch_sizes=[1], write=False, **FAST)
    (row,) = [r for r in rows if r.get("status") == "unavailable"]
    assert row["variant"] == "dense" and "onnx_dense" in row["reason"]
    assert f"`mfdeploy export {tiny_model(build)} --out {build / 'onnx_dense'}`" in row["reason"]
    assert [r["variant"] for r in _measured(rows)] == ["pruned"]
    assert _measured(rows)[0]["pruned_over_dense"] is None
    assert not (build / "bench.json").exists() and not (build / "onnx_dense").exists()


def tiny_model(build: Path) -> str:
    return json.loads((build / "build.json").read_text())["model"]


def test_no_dense(build_dir, tmp_path):
    rows = run_bench(build_dir, backends=["torch"], towers=["text"], batch_sizes=[3], text_len=5, dense=False,
                     write=False, **FAST)
    (row,) = rows
    assert row["variant"] == "pruned" and row["pruned_over_dense"] is None and row["text_len"] == 5


def test_time_interleaved_alternates_and_honours_min_time():
    calls = []
    lat = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, iters=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert len(lat["a"]) == len(lat["b"]) == 3
    lat = time_interleaved({"a": lambda: None}, warmup=0, iters=1, min_time=0.01)
    assert len(lat["a"]) > 1 and lat["a"].sum() >= 0.01 or len(lat["a"]) == 10_000


def test_time_interleaved_uses_each_variants_timer():
    """A runner's own clock (CUDA events for torch on a GPU) times its calls; the others get the wall clock."""
    calls = []
    lat = time_interleaved({"gpu": lambda: calls.append("gpu"), "cpu": lambda: calls.append("cpu")}, warmup=0,
                           iters=4, timers={"gpu": lambda call: (call(), 0.25)[1]})
    assert calls == ["gpu", "cpu", "cpu", "gpu"] * 2
    assert list(lat["gpu"]) == [0.25] * 4 and all(0 <= t < 0.25 for t in lat["cpu"])


def test_runner_time_call_is_the_wall_clock_and_rows_say_so(tiny_clip_dir, tmp_path):
    import time

    from helpers import EchoRunner, make_build

    assert 0.02 <= EchoRunner().time_call(lambda: time.sleep(0.02)) < 1.0
    rows = run_bench(make_build(tmp_path / "b", tiny_clip_dir, onnx_dense=False), backends=["torch"],
                     towers=["vision"], batch_sizes=[1], warmup=0, iters=2, min_time=0.0, write=False)
    assert {r["timing"] for r in rows} == {"wall clock"}


def test_time_blocks_runs_back_to_back_and_leaves_each_first_call_untimed():
    import time

    from mfdeploy.bench.timing import time_blocks

    calls, slow = [], iter([0.05, 0, 0, 0.05, 0, 0, 0.05, 0, 0, 0.05, 0, 0])

    def call(name):
        calls.append(name)
        time.sleep(next(slow))  # the first call of every block is the slow one

    lat = time_blocks({"a": lambda: call("a"), "b": lambda: call("b")}, rounds=2, block=2)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3  # blocks of 1 + 2, order alternating
    assert len(lat["a"]) == len(lat["b"]) == 4
    assert lat["a"].max() < 0.04 and lat["b"].max() < 0.04  # the slow first calls were not timed


def test_time_blocks_leaves_the_head_of_each_block_untimed_for_settle_seconds():
    """The untimed head of a block lasts at least `settle` seconds (another runtime's threads still spinning), as
    many calls as that takes, and at least one."""
    import time

    from mfdeploy.bench.timing import time_blocks

    calls = []

    def call(name):
        calls.append(name)
        time.sleep(0.01)

    lat = time_blocks({"a": lambda: call("a"), "b": lambda: call("b")}, rounds=1, block=2, settle=0.035)
    assert len(lat["a"]) == len(lat["b"]) == 2
    heads = [calls.count("a") - 2, calls.count("b") - 2]
    assert all(4 <= h <= 6 for h in heads), heads  # 0.035 s of 0.01 s calls: 4 untimed (a slow sleep: a few more)
    assert calls[:heads[0] + 2] == ["a"] * (heads[0] + 2)  # back to back, then the other name
    calls.clear()
    time_blocks({"a": lambda: call("a")}, rounds=1, block=1, settle=0)
    assert calls == ["a", "a"]  # settle 0: one untimed call, one timed


def test_cli_bench(build_dir, tmp_path, capsys):
    main(["bench", str(build_dir), "--backends", "ort-cpu,trt", "--towers", "vision", "--batch-sizes", "1,2",
          "--warmup", "0", "--iters", "2", "--min-time", "0", "--threads", "1", "--no-dense",
          "--json", str(tmp_path / "rows.json")])
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["backend"], r["batch"]) for r in _measured(rows)] == [("ort-cpu", 1), ("ort-cpu", 2)]
    assert [r["backend"] for r in rows if r.get("status") == "unavailable"] == ["trt"]
    out = capsys.readouterr().out
    assert "ort-cpu" in out and "unavailable" in out and "trt" in out


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one clear line
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "0"], "--batch-sizes: batch size must be positive, got 0"),
    (["--batch-sizes", "-4"], "--batch-sizes: batch size must be positive, got -4"),
    (["--batch-sizes", "1,x"], "--batch-sizes: 'x' is not an integer"),
    (["--batch-sizes", ","], "--batch-sizes: empty list"),
    (["--backends", "torch,tflite"], "known: torch, torch-cuda, torch-cuda-sparse, ort-cpu, ort-cuda, ort-trt, trt"),
    (["--towers", "audio"], "--towers: unknown 'audio'; known: vision, text"),
    (["--text-len", "0"], "--text-len: must be between 1"),
    (["--text-len", "999"], "--text-len: must be between 1 and the model's maximum 48, got 999"),
    (["--iters", "0"], "--iters: must be >= 1"),
    (["--batch-sizes", "1,,2"], "--batch-sizes 1,,2: an empty item between commas"),  # was skipped
    (["--threads", "0"], "--threads: must be >= 1, got 0"),  # these three were checked after the model loaded
    (["--warmup", "-1"], "--warmup: must be >= 0, got -1"),
    (["--min-time", "-1"], "--min-time: must be a finite number >= 0, got -1.0"),
    (["--min-time", "nan"], "--min-time: must be a finite number >= 0, got nan"),  # timed nothing
    (["--min-time", "inf"], "--min-time: must be a finite number >= 0, got inf"),  # never ended
    (["--batch-sizes", "1,100000000"], "--batch-sizes 100000000: its inputs alone take"),  # made, then OOM-killed
    (["--batch-sizes", "100000000", "--towers", "text"], "of memory available here"),
    (["--batch-sizes", "100000", "--towers", "text"], "the text tower's activations at this batch would take about"),
])
def test_cli_bad_arguments(build_dir, capsys, args, message):
    line = _fails(["bench", str(build_dir), *args], capsys)
    assert line.startswith("error:") and message in line, line


def test_cli_not_a_build(tmp_path, tiny_clip_dir, capsys):
    assert "not a directory" in _fails(["bench", str(tmp_path / "nope")], capsys)
    assert "not a build directory (no build.json" in _fails(["bench", str(tiny_clip_dir)], capsys)
    (tmp_path / "build.json").write_text("{not json")
    assert "build.json: unreadable" in _fails(["bench", str(tmp_path)], capsys)
    (tmp_path / "build.json").write_text(json.dumps({"model": str(tiny_clip_dir)}))
    assert "no onnx/vision.onnx or onnx/text.onnx" in _fails(["bench", str(tmp_path)], capsys)


def test_cli_only_unavailable_backends_fails(build_dir, tmp_path, capsys):
    """Nothing measured: one line with the reasons, and no report written (an earlier one stays bench.*)."""
    build = tmp_path / "b"
    shutil.copytree(build_dir, build)
    (build / "bench.json").write_text("[]")
    before = sorted(p.name for p in build.iterdir())
    line = _fails(["bench", str(build), "--backends", "trt", "--json", str(tmp_path / "r.json")], capsys)
    assert "no requested backend can run on this machine (trt: TensorRT" in line and "nothing was written" in line
    assert sorted(p.name for p in build.iterdir()) == before and (build / "bench.json").read_text() == "[]"
    assert not (tmp_path / "r.json").exists()


def test_int8_towers_are_timed_beside_pruned_and_dense(build_dir, tmp_path):
    """A build with onnx_int8/ gets an int8 variant on the ONNX Runtime backends, with sizes on disk."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    build = tmp_path / "b"
    shutil.copytree(build_dir, build)
    (build / "onnx_int8").mkdir()
    for tower in ("vision", "text"):
        quantize_dynamic(str(build / "onnx" / f"{tower}.onnx"), str(build / "onnx_int8" / f"{tower}.onnx"),
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])  # ORT < 1.24: no
        # ConvInteger for int8 weights (quantize.ort.conv_integer_int8)
    rows = run_bench(build, backends=["torch", "ort-cpu"], batch_sizes=[2], **FAST)
    measured = {(r["backend"], r["tower"], r["variant"]): r for r in _measured(rows)}
    assert {k for k in measured if k[2] == "int8"} == {("ort-cpu", "vision", "int8"), ("ort-cpu", "text", "int8")}
    for tower in ("vision", "text"):
        q, p, d = (measured["ort-cpu", tower, v] for v in ("int8", "pruned", "dense"))
        assert q["over_dense"] == pytest.approx(q["throughput"] / d["throughput"])
        assert p["over_dense"] == pytest.approx(p["pruned_over_dense"])
        assert q["onnx_mb"] < p["onnx_mb"] and q["onnx_mb"] > 0
        assert measured["torch", tower, "pruned"]["onnx_mb"] is None
    md = (build / "bench.md").read_text()
    assert "int8/dense" in md and "ONNX MiB fp32 / int8" in md
    q = measured["ort-cpu", "vision", "int8"]
    assert f"{q['over_dense']:.2f}x" in md
    # asked for, but the build has none: an unavailable row that says how to make them
    rows = run_bench(build_dir, backends=["ort-cpu"], batch_sizes=[1], int8=True, write=False, **FAST)
    gone = [r for r in rows if r.get("status") == "unavailable"]
    assert len(gone) == 1 and gone[0]["variant"] == "int8" and "--int8" in gone[0]["reason"]


def test_input_memory_counts_the_towers_timed_only():
    """A text-only run made the image inputs of every batch size too (10 GiB for --batch-sizes 100000)."""
    from mfdeploy.bench.args import check_input_memory
    from mfdeploy.errors import UserError

    gib = 2**30
    check_input_memory([100_000], ["text"], 224, 16, 16 * gib)  # 25 MB of ids and mask
    with pytest.raises(UserError, match=r"^--batch-sizes 100000: its inputs alone take 56\.1 GiB, over an eighth "
                                        r"of the 16\.0 GiB of memory available here"):
        check_input_memory([1, 100_000], ["vision", "text"], 224, 16, 16 * gib)
    check_input_memory([100_000], ["vision"], 224, 16, None)  # unknown: no check


def test_activation_memory_is_estimated_before_a_batch_the_oom_killer_would_end():
    """--batch-sizes 100000 on the bundled text tower was killed for memory (exit 137, no line): it is refused
    from an estimate of the activations; a size that fits (4096 peaked at about 1 GB) still runs."""
    from transformers import CLIPConfig

    from mfdeploy.bench.args import check_activation_memory, tower_shapes
    from mfdeploy.errors import UserError
    from mfdeploy.zoo import BUNDLED_DIR

    gib = 2**30
    shapes = tower_shapes(CLIPConfig.from_pretrained(BUNDLED_DIR), 96, 16)
    assert shapes == {"vision": (10, 160, 640, 4), "text": (16, 160, 640, 4)}  # (96 / 32)^2 + 1 patches
    check_activation_memory([1, 4096], ["vision", "text"], shapes, 23 * gib)
    with pytest.raises(UserError, match=r"^--batch-sizes 100000: the text tower's activations at this batch would "
                                        r"take about 62\.2 GiB \(estimated\), over half of the 23\.0 GiB"):
        check_activation_memory([100_000], ["text"], shapes, 23 * gib)
    check_activation_memory([100_000], ["text"], shapes, None)  # unknown: no check
    assert tower_shapes(object(), 96, 16) == {}  # a config without the sizes: no estimate
