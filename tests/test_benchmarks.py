"""The benchmark scripts run end to end (on their tiny smoke-test model) and print what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_serve_vitb32_smoke():
    run = subprocess.run([sys.executable, str(BENCHMARKS / "serve_vitb32.py"), "--smoke", "--fusions", "--rounds", "1",
                          "--block", "1"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "COLUMNS": "200"})  # wide enough that rich does not wrap table cells
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    rows = [line for line in out.splitlines() if line.startswith("│ vision") or line.startswith("│ text")]
    assert len(rows) == 6  # torch, ORT and ORT on the fused graph, per tower
    assert "transformer optimizer (clip) fused: {'vision': {" in out
    assert "'Attention': 2" in out  # one fused attention per layer of each 2-layer tower
    ort_rows = [r for r in rows if "onnxruntime cpu" in r]
    assert all("1.000000" in r for r in ort_rows)  # the ONNX graph computes what torch computes
    for layer in ("q/k/v/out proj", "fc1", "fc2"):
        assert f"│ {layer}" in out
    assert "of the vision tower's FLOPs; on them alone" in out and "vision ORT/torch = " in out
    assert "fp32 matmul rate before timing" in out and "fp32 matmul rate after timing" in out


@pytest.mark.slow
def test_quantize_vitb32_smoke():
    run = subprocess.run([sys.executable, str(BENCHMARKS / "quantize_vitb32.py"), "--smoke", "--rounds", "2",
                          "--block", "1"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for tower in ("vision", "text"):
        for graph in ("dense fp32", "dense int8 dynamic", "dense int8 static", "MoPE 0.5 fp32",
                      "MoPE 0.5 int8 dynamic", "MoPE 0.5 int8 static"):
            assert any(line.startswith(f"│ {tower}") and f"│ {graph} " in line for line in out.splitlines()), graph
    cosines = [float(c) for line in out.splitlines() if "int8" in line and line.startswith("│")
               for c in [line.split("│")[5].strip()]]
    assert len(cosines) == 8 and min(cosines) >= 0.99  # every INT8 graph against its own fp32 graph
    assert "load average (1, 5, 15 min) before timing" in out and "(target >= 4x)" in out


@pytest.mark.slow
def test_quantize_variants_smoke(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    keep = subprocess.run([sys.executable, str(BENCHMARKS / "quantize_vitb32.py"), "--smoke", "--rounds", "1",
                           "--block", "1", "--keep", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert keep.returncode == 0, keep.stderr[-2000:]
    run = subprocess.run([sys.executable, str(BENCHMARKS / "quantize_variants.py"), str(tmp_path / "MoPE 0.5" /
                          "vision.onnx"), "--rounds", "1", "--block", "1"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:] for line in run.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| graph")}
    assert set(rows) == {"fp32", "shipped (static QDQ)", "MatMul outputs quantized", "Conv output float too",
                         "+ attention MatMuls", "+ Adds", "clip-optimized"}
    assert float(rows["fp32"][3]) == 1.0 and float(rows["shipped (static QDQ)"][3]) >= 0.99
    assert "load average before" in run.stdout


@pytest.mark.slow
def test_bf16_cpu_smoke():
    pytest.importorskip("openvino")
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bf16_cpu.py"), "--smoke", "--rounds", "1", "--block", "1"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "250"})
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()
            if line.startswith("│ vision") or line.startswith("│ text")]
    names = ("ORT fp32", "OpenVINO f32", "torch fp32", "torch bf16", "ORT int8", "OpenVINO int8", "MoPE 0.5 ORT fp32",
             "MoPE 0.5 ORT int8", "MoPE 0.5 OpenVINO int8")
    for tower in ("vision", "text"):
        for batch in ("1", "8"):
            got = {r[2]: r for r in rows if r[0] == tower and r[1] == batch}
            assert set(names) <= set(got), (tower, batch, sorted(got))
            assert got["ORT fp32"][4] == "1.00x" and float(got["OpenVINO f32"][5]) >= 0.99999
            assert all(float(r[5]) >= 0.99 for r in got.values())  # every row against its model's ORT fp32
            assert got["torch bf16"][6] == "bf16" and got["ORT int8"][6] == "int8+f32"
            assert got["OpenVINO int8"][6].startswith(("int8+", "f32"))
    assert "load average (1, 5, 15 min) before timing" in out and "OpenVINO CPU capabilities:" in out
    assert "(target >= 6x)" in out


@pytest.mark.slow
def test_serve_faults_quick(tiny_clip_dir, tmp_path):
    """benchmarks/serve_faults.py in its quick mode over a tiny build: every scenario gets the codes it should."""
    import re

    from helpers import make_build

    build = make_build(tmp_path / "build", tiny_clip_dir, onnx_dense=False)
    run = subprocess.run([sys.executable, str(BENCHMARKS / "serve_faults.py"), "--quick", "--build", str(build)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    out = run.stdout
    rows = {line.split("|")[1].strip().split(":")[0]: line.split("|")[3].strip() for line in out.splitlines()
            if line.startswith("| ") and line.count("|") == 7}
    assert rows["oversized"] == "413: 4" and rows["large, under the limit"] == "200: 4", rows
    assert "-1" not in rows["bad requests"] and "500" not in rows["bad requests"], rows
    sigterm = next(v for k, v in rows.items() if k.startswith("SIGTERM"))
    assert set(re.findall(r"(-?\d+): \d+", sigterm)) <= {"200", "503"}, sigterm
    bad = [line for line in out.splitlines() if line.startswith("| ") and line.count("|") == 5][1:]
    assert len(bad) >= 20 and not any("MISMATCH" in line for line in bad), bad
    exit_s = float(re.search(r"SIGTERM to exit: ([\d.]+) s \(--grace-s 2\), exit code 0, every 503 with "
                             r"Retry-After: True, tracebacks in the log: 0", out).group(1))
    assert exit_s < 4
    assert "load average (1, 5, 15 min) before" in out


@pytest.mark.slow
def test_mope_scoring_smoke():
    """benchmarks/mope_scoring.py on its tiny model: the three scorings keep the same modules, and it states the
    speed-ups and the GEMM rates."""
    run = subprocess.run([sys.executable, str(BENCHMARKS / "mope_scoring.py"), "--smoke", "--depth-share", "0.5"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    rows = [line for line in out.splitlines() if line.startswith("│ ") and ("replay" in line or "full" in line)]
    assert len(rows) == 6  # two rounds of three scorings
    assert sum("replay + screening" in r for r in rows) == 2 and all(" of " in r for r in rows if "screening" in r)
    assert "identical in all three (bit for bit)" in out and "load average (1, 5, 15 min) before" in out
    assert "speed-up replay / full forwards" in out and "speed-up replay + screening / full forwards" in out
    assert "(target >= 2x)" in out and "oneDNN GFLOP/s" in out


@pytest.mark.slow
def test_mope_screen_spread_smoke():
    """benchmarks/mope_screen_spread.py: every module scored both ways, the differences inside the intervals."""
    run = subprocess.run([sys.executable, str(BENCHMARKS / "mope_screen_spread.py"), "--model", "vitb32", "--smoke"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("│")[1:-1] for line in run.stdout.splitlines() if line.startswith("│ ")]
    assert len(rows) == 2 * 2 * 2  # 2 towers x 2 layers x (heads, groups)
    shares = [float(r[2].strip().rstrip("%")) for r in rows]
    assert all(0 <= s < 50 for s in shares)  # under half the interval, where screening would stop
    assert "largest over every module:" in run.stdout


@pytest.mark.slow
def test_compile_settings_smoke(tmp_path):
    """benchmarks/compile_settings.py: one process per variant, each reporting its own settings and speed-ups."""
    run = subprocess.run([sys.executable, str(BENCHMARKS / "compile_settings.py"), "--smoke", "--pairs", "1",
                          "--batches", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    runs = json.loads((tmp_path / "compile_settings.json").read_text())
    assert [r["variant"] for r in runs] == ["freezing", "runner"]
    assert "cpp_wrapper" not in runs[0]["compiled_with"] and "concat_linear" not in runs[0]["compiled_with"]
    assert "cpp_wrapper=True" in runs[1]["compiled_with"] and "concat_linear=True" in runs[1]["compiled_with"]
    assert "module guards kept (vision, text)" in runs[0]["compiled_with"]  # the freezing variant: the old way
    assert "module guards off" in runs[1]["compiled_with"]
    for r in runs:
        assert set(r["cells"]) == {"text 1", "vision 1"} and all(c["speedup"] > 0 for c in r["cells"].values())
    table = (tmp_path / "compile_settings.md").read_text()
    assert "| freezing |" in table and "| runner |" in table and "load average" in table


@pytest.mark.slow
def test_block_settle_smoke():
    """benchmarks/block_settle.py: ONNX Runtime spinning or not, each timed with settle 0 and the default, with torch's
    latency by position in its block and the load average."""
    run = subprocess.run([sys.executable, str(BENCHMARKS / "block_settle.py"), "--smoke", "--rounds", "1", "--block",
                          "2"], capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if "spinning" in line and line.startswith("│")]
    assert [(r.split("│")[1].strip(), r.split("│")[2].strip()) for r in rows] == \
        [("spinning", "0"), ("spinning", "0.05"), ("not spinning", "0"), ("not spinning", "0.05")]
    assert all(len(r.split("│")[6].split()) == 2 for r in rows)  # one median per timed position in the block
    assert "load average (1, 5, 15 min) before timing" in run.stdout


def test_torch_linear_smoke(tmp_path):
    """benchmarks/torch_linear.py: both GEMMs' rates, then the three runners per tower and batch, the oneDNN towers
    within 1e-5 of PyTorch's `linear`, with the load average."""
    run = subprocess.run([sys.executable, str(BENCHMARKS / "torch_linear.py"), "--smoke", "--rounds", "1",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    table = (tmp_path / "torch_linear.md").read_text()
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith(("| text |", "| vision |"))]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("text", "1"), ("text", "8"), ("vision", "1"),
                                                            ("vision", "8")]
    assert all(float(r[-1]) < 1e-5 for r in rows)  # max abs difference of the embeddings
    assert table.count("load average") >= 3 and "8x3072 @ 3072x768" in table
