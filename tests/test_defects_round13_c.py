"""Thirteenth hunt (c): the docs walked as a new user. `eval` of a build's quantized --out folder, and the torch
floor the install pages quote."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from helpers import one_error, run_cli

from mfdeploy.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build_quantized(tiny_build, shapes_pairs_jsonl, tmp_path_factory) -> dict[str, Path]:
    """`mfdeploy quantize BUILD --out DIR`, both targets: towers and quantize.json, no export.json."""
    root = tmp_path_factory.mktemp("r13c-quantized")
    assert run_cli(["quantize", str(tiny_build), "--target", "ort", "--scheme", "static", "--calib",
                    str(shapes_pairs_jsonl), "--calib-samples", "8", "--out", str(root / "ort")]) == 0
    assert run_cli(["quantize", str(tiny_build), "--target", "trt", "--calib", str(shapes_pairs_jsonl),
                    "--calib-samples", "8", "--out", str(root / "trt")]) == 0
    return {"ort": root / "ort", "trt": root / "trt"}


def test_eval_of_a_builds_int8_out_folder_names_the_route_that_evaluates(build_quantized, tiny_build,
                                                                        shapes_pairs_jsonl, capsys):
    """quantize.md said `mfdeploy eval DIR --backend onnx-int8` measures `quantize BUILD --out DIR`; it failed with
    "an output of mfdeploy (quantize.json), not a model checkpoint: pass the checkpoint, prune or build directory it
    was made from", which says nothing of onnx-int8. The line now gives the commands that evaluate those towers."""
    q, build, calib = build_quantized["ort"], tiny_build.resolve(), shapes_pairs_jsonl
    capsys.readouterr()
    assert run_cli(["eval", str(q), "--backend", "onnx-int8"]) == 2
    assert one_error(capsys) == (
        f"error: {q}: ONNX Runtime INT8 towers of the build {build}, with no export.json naming the model whose "
        "tokenizer and image processor prepare the inputs: evaluate them from the build (`mfdeploy quantize "
        f"{build} --in-place --scheme static --calib {calib}`, then `mfdeploy eval {build} --backend onnx-int8`)")
    assert not (q / "eval.json").exists()


def test_eval_of_a_builds_trt_out_folder_goes_through_an_export(build_quantized, tiny_build, capsys):
    q, build = build_quantized["trt"], tiny_build.resolve()
    capsys.readouterr()
    assert run_cli(["eval", str(q), "--backend", "onnx-int8", "--json", str(q.parent / "r.json")]) == 2
    assert one_error(capsys) == (
        f"error: {q}: TensorRT Q/DQ towers of the build {build}, with no export.json naming the model whose "
        "tokenizer and image processor prepare the inputs: quantize an export of the build instead (`mfdeploy "
        f"export {build} --out EXPORT`, then `mfdeploy quantize EXPORT --target trt --out DIR`) and evaluate DIR "
        "with --backend onnx-int8")
    assert not (q.parent / "r.json").exists()


def test_the_python_api_refuses_the_folder_with_the_same_line(build_quantized):
    import mfdeploy

    with pytest.raises(UserError, match=r"ONNX Runtime INT8 towers of the build .*`mfdeploy eval .* --backend "
                                        r"onnx-int8`\)$"):
        mfdeploy.evaluate(build_quantized["ort"], "shapes", backend="onnx-int8")


def test_the_route_that_the_error_gives_evaluates(tiny_build, shapes_pairs_jsonl, tmp_path, capsys):
    """The commands the line names run as given: a static INT8 quantize of a model other than the bundled one needs
    its calibration pairs, so the line names the file quantize.json records (without it `--in-place` failed with
    "--calib is required"); the build's own INT8 towers then evaluate."""
    import shutil

    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    assert run_cli(["quantize", str(build), "--target", "ort", "--scheme", "static", "--calib",
                    str(shapes_pairs_jsonl), "--calib-samples", "8", "--out", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert run_cli(["eval", str(tmp_path / "q"), "--backend", "onnx-int8"]) == 2
    line = one_error(capsys)
    route = re.findall(r"`mfdeploy ([^`]*)`", line)
    assert route == [f"quantize {build.resolve()} --in-place --scheme static --calib {shapes_pairs_jsonl}",
                     f"eval {build.resolve()} --backend onnx-int8"]
    assert run_cli([*route[0].split(), "--calib-samples", "8"]) == 0
    assert run_cli([*route[1].split(), "--images", "40", "--pairs", "40", "--no-retention"]) == 0


def test_serve_keeps_its_own_wording(build_quantized, tiny_build):
    from mfdeploy.server import ServeConfig
    from mfdeploy.server.source import resolve

    with pytest.raises(UserError, match=r"the server needs: serve them from the build .*`mfdeploy serve .* "
                                        r"--backend ort-int8`\)$"):
        resolve(ServeConfig(build_dir=build_quantized["ort"], backend="ort-int8").validate())


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_the_install_pages_quote_pyprojects_torch_range(page):
    """getting-started.md said the pyproject allows `torch>=2.4,<3`; it says `torch>=2.11,<3`."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(d.replace(" ", "") for d in deps if re.match(r"torch\b", d))
    quoted = re.findall(r"the pyproject allows `(torch[^`]*)`", (ROOT / page).read_text())
    assert quoted == [torch]


@pytest.mark.parametrize("folder", ["onnx", "onnx_dense"])
def test_eval_of_a_builds_own_folder_points_at_the_build(tiny_build, folder, capsys):
    """`mfdeploy eval BUILD/onnx` said "not a model checkpoint (no config.json)"; with the route above, BUILD/onnx_int8
    would have been told to quantize the build again. Both now name the build, which evaluates every tower."""
    capsys.readouterr()
    assert run_cli(["eval", str(tiny_build / folder), "--backend", "onnx"]) == 2
    assert one_error(capsys) == (f"error: {tiny_build / folder} is a folder of the build {tiny_build}: evaluate the "
                                 f"build (`mfdeploy eval {tiny_build}`, with --backend onnx-int8 for its INT8 towers)")


def test_the_builds_checkpoint_folder_still_evaluates(tiny_build):
    assert run_cli(["eval", str(tiny_build / "pruned"), "--images", "40", "--pairs", "40"]) == 0
