"""What `mfdeploy serve` can serve (issue 31, item 10): a build's pruned or dense model (`--variant`), its INT8
towers (`--backend ort-int8`), and a plain `mfdeploy export` directory; every other combination is refused in
one line before the socket opens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import make_build
from test_server import REPO, Server

from mfdeploy.errors import UserError
from mfdeploy.runtime.ort_runner import OrtRunner
from mfdeploy.server import ServeConfig, ServerState
from mfdeploy.server.source import resolve

TEXTS = ["a red circle.", "two small blue squares to the left of a green triangle", "star"]


@pytest.fixture(scope="module")
def build(tiny_clip_dir, tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("variants") / "build", tiny_clip_dir)  # with onnx_dense/


@pytest.fixture(scope="module")
def export_dir(tiny_clip_dir, tmp_path_factory) -> Path:
    from mfdeploy.pipelines.export import export_model

    out = tmp_path_factory.mktemp("variants-export") / "export"
    export_model(str(tiny_clip_dir), out, n_parity=4)
    return out


def served_texts(directory: Path, **kw) -> tuple[np.ndarray, ServerState]:
    state = ServerState(ServeConfig(build_dir=directory, **kw).validate())
    state.load()
    try:
        return state.embed_texts(TEXTS)[0], state
    finally:
        state.runner.close()


def onnx_texts(onnx_dir: Path, state: ServerState) -> np.ndarray:
    runner = OrtRunner(onnx_dir, threads=1)
    return runner.embed_texts(*state.pre.texts(TEXTS))


def test_the_dense_variant_serves_onnx_dense(build):
    pruned, p_state = served_texts(build)
    dense, d_state = served_texts(build, variant="dense")
    assert np.allclose(pruned, onnx_texts(build / "onnx", p_state), atol=1e-5)
    assert np.allclose(dense, onnx_texts(build / "onnx_dense", d_state), atol=1e-5)
    assert np.min(np.sum(pruned * dense, axis=1)) < 0.999  # two different models behind the same API
    assert "dense" in d_state.model_name and "magnitude 0.5" in p_state.model_name


def test_an_export_directory_is_served_as_exported(build, export_dir):
    got, state = served_texts(export_dir)
    assert np.allclose(got, onnx_texts(export_dir, state), atol=1e-5)
    dense, _ = served_texts(build, variant="dense")  # the build's dense towers came from the same checkpoint
    assert np.min(np.sum(got * dense, axis=1)) >= 0.9999
    assert "export" in state.model_name


@pytest.mark.parametrize("target,kw,message", [
    ("build", {"backend": "ort-int8", "variant": "dense"}, "a build's INT8 towers (onnx_int8/) are the pruned"),
    ("export", {"variant": "pruned"}, "is an export of a dense model; serve it without --variant"),
    ("export", {"backend": "torch"}, "serve it with ort-cpu, ort-cuda or trt"),
    ("export", {"backend": "ort-int8"}, "onnx_int8/"),
    ("build/onnx", {}, "is a folder of the build"),
    ("build/pruned", {}, "is a folder of the build"),
    ("empty", {}, "not a build directory"),
    ("no-manifest", {}, "no export.json naming the model"),
])
def test_what_cannot_be_served_is_refused_in_one_line(build, export_dir, tmp_path, target, kw, message):
    paths = {"build": build, "export": export_dir, "build/onnx": build / "onnx", "build/pruned": build / "pruned",
             "empty": tmp_path}
    if target == "no-manifest":
        paths[target] = tmp_path / "bare"
        paths[target].mkdir()
        for name in ("vision.onnx", "text.onnx"):
            (paths[target] / name).write_bytes((export_dir / name).read_bytes())
    with pytest.raises(UserError, match="^[^\n]*$") as e:
        resolve(ServeConfig(build_dir=paths[target], **kw).validate())
    assert message in str(e.value)


def test_bad_variant_name():
    with pytest.raises(UserError, match="--variant int8: choose one of pruned, dense"):
        ServeConfig(build_dir=Path("."), variant="int8").validate()


def test_a_build_without_onnx_dense_says_how_to_make_it(build, tmp_path):
    old = shutil.copytree(build, tmp_path / "old", ignore=shutil.ignore_patterns("onnx_dense"))  # an older build
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "mfdeploy.cli", "serve", str(old), "--port", "0", "--variant",
                           "dense"], capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "mfdeploy export" in errors[0], proc.stderr
    assert "onnx_dense" in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("which", ["export", "dense"])
def test_serve_cli_end_to_end(build, export_dir, tmp_path, which):
    target, args = (export_dir, ()) if which == "export" else (build, ("--variant", "dense"))
    s = Server(target, tmp_path / "log", *args)
    try:
        resp = s.post("/v1/embeddings", {"input": TEXTS})
        assert resp.status_code == 200, resp.text
        got = np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)
        want, _ = served_texts(export_dir if which == "export" else build, **({} if which == "export"
                                                                               else {"variant": "dense"}))
        assert np.allclose(got, want, atol=1e-5)
        assert httpx.get(s.url + "/health").json()["status"] == "ok"
    finally:
        assert s.stop() == 0


def test_quantized_towers_of_an_export_are_served_as_an_export(build, export_dir, tmp_path):
    """`mfdeploy quantize EXPORT --out DIR` wrote towers nothing could serve (no export.json); DIR is now an export
    directory of the same model, its files recorded again; a build's quantized towers point to --in-place."""
    import json

    from mfdeploy.artifacts.io import sha256
    from mfdeploy.quantize.run import QuantizeConfig, run_quantize

    run_quantize(export_dir, tmp_path / "q", QuantizeConfig(scheme="dynamic"))
    manifest = json.loads((tmp_path / "q" / "export.json").read_text())
    assert manifest["quantized"]["record"] == "quantize.json"
    assert manifest["model"] == json.loads((export_dir / "export.json").read_text())["model"]
    assert set(manifest["files"]) == {"vision.onnx", "text.onnx", "parity_inputs.npz", "quantize.json"}
    assert all(rec["sha256"] == sha256(tmp_path / "q" / name) for name, rec in manifest["files"].items())
    got, state = served_texts(tmp_path / "q")
    assert np.allclose(got, onnx_texts(tmp_path / "q", state), atol=1e-5)  # the int8 towers, as ORT runs them
    fp32, _ = served_texts(export_dir)
    assert np.min(np.sum(got * fp32, axis=1)) >= 0.99  # the same model, quantized
    assert "quantized export" in state.model_name
    # /health said f32 for these towers (QDQ and MatMulInteger nodes): the label came from the variant name only
    assert {t: state.runner.tower_precision(t) for t in ("vision", "text")} == {"vision": "int8+f32",
                                                                               "text": "int8+f32"}
    assert fp32 is not None and served_texts(export_dir)[1].runner.tower_precision("vision") == "f32"
    run_quantize(build, tmp_path / "qb", QuantizeConfig(scheme="dynamic"))
    with pytest.raises(UserError, match=rf"^{tmp_path / 'qb'}: ONNX Runtime INT8 towers of the build {build}, with "
                                        r"no export.json naming .*: serve them from the build \(`mfdeploy quantize "
                                        rf"{build} --in-place --scheme dynamic`, then `mfdeploy serve .* --backend "
                                        r"ort-int8`\)$"):
        resolve(ServeConfig(build_dir=tmp_path / "qb").validate())
