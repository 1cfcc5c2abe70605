"""Towers stored with ONNX external data (issue 16): every step after export reads, copies and hashes the
`.onnx.data` files. A tiny model exported with `--external-data` stands in for a tower over 2 GiB (the
exporter picks external data itself above that size; the consumers see the same files either way)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import run_cli

from mfdeploy.exporting.external import external_data_files, model_bytes


@pytest.fixture(scope="module")
def moved_export(tiny_clip_dir, tmp_path_factory):
    """`mfdeploy export --external-data`, then the directory moved: the data files are found by relative path."""
    root = tmp_path_factory.mktemp("external")
    assert run_cli(["export", str(tiny_clip_dir), "--out", str(root / "onnx"), "--external-data"]) == 0
    shutil.move(str(root / "onnx"), str(root / "moved"))
    return root / "moved"


def test_export_writes_and_hashes_the_data_files(moved_export):
    record = json.loads((moved_export / "export.json").read_text())
    for tower in ("vision", "text"):
        assert external_data_files(moved_export / f"{tower}.onnx") == [moved_export / f"{tower}.onnx.data"]
        assert f"{tower}.onnx.data" in record["files"] and record["towers"][tower]["external_data"]


def test_onnx_runtime_runner_loads_them(moved_export):
    from mfdeploy.runtime.ort_runner import OrtRunner

    runner = OrtRunner(moved_export, threads=1)
    emb = runner.embed_images(np.zeros((2, 3, 32, 32), dtype=np.float32))
    assert emb.shape == (2, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_quantize_keeps_external_data_and_counts_it(moved_export, tmp_path):
    out = tmp_path / "q"
    assert run_cli(["quantize", str(moved_export), "--out", str(out), "--calib", "shapes",
                    "--calib-samples", "8"]) == 0
    record = json.loads((out / "quantize.json").read_text())
    assert record["parity"]["passed"]
    for tower in ("vision", "text"):
        files = external_data_files(out / f"{tower}.onnx")
        assert files == [out / f"{tower}.onnx.data"]  # beside the INT8 tower, under its own name
        t = record["towers"][tower]
        assert t["bytes"] == model_bytes(out / f"{tower}.onnx") > (out / f"{tower}.onnx").stat().st_size
        assert t["fp32_bytes"] == model_bytes(moved_export / f"{tower}.onnx")
        assert t["size_ratio"] < 1  # int8 weights, counted with the data file (not the graph file alone)


def test_engine_stage_reads_the_weights(moved_export, tmp_path):
    from mfdeploy.exporting.sparsity import check_2to4

    report = check_2to4(moved_export / "vision.onnx")  # the engine's 2:4 check loads the external weights
    assert report["n_eligible"] > 0 and report["n_sparse"] == 0  # dense weights: nothing 2:4
    assert run_cli(["engine", str(moved_export), "--out", str(tmp_path / "engines")]) == 0
