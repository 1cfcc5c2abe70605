"""Faults a new user hit (a seventh defect hunt): a cut checkpoint, edited sources and manifests, options out of
range; each ends in one line naming it, before the slow work and before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import save_tiny_clip
from helpers import one_error as _one_error
from helpers import run_cli
from safetensors.torch import load_file, save_file

from mfdeploy.errors import UserError


def test_a_checkpoint_missing_weights_is_refused_not_filled_at_random(tmp_path, capsys):
    """transformers initialises what a checkpoint lacks at random with a warning only (silenced here): the cut
    model evaluated near chance and exported with a perfect parity check against itself."""
    cut = save_tiny_clip(tmp_path / "cut")
    weights = load_file(cut / "model.safetensors")
    dropped = sorted(k for k in weights if k.startswith("text_model.encoder.layers.0."))
    save_file({k: v for k, v in weights.items() if k not in dropped}, cut / "model.safetensors",
              metadata={"format": "pt"})
    capsys.readouterr()  # save_tiny_clip's progress bar
    assert run_cli(["export", str(cut), "--out", str(tmp_path / "e")]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: {cut}: the checkpoint lacks {len(dropped)} weight(s) the model needs "
                           f"({dropped[0]}, "), line
    assert "they would be random" in line and not (tmp_path / "e").exists()


def test_quantize_checks_its_source_against_the_manifest_before_reading_it(tmp_path, tiny_clip_dir, tiny_build,
                                                                          capsys):
    """A cut tower gave a protobuf traceback; a garbage parity_inputs.npz was copied and hashed as valid."""
    export = tmp_path / "export"
    assert run_cli(["export", str(tiny_clip_dir), "--out", str(export)]) == 0
    capsys.readouterr()
    for name, damage in (("vision.onnx", b"\0" * 1000), ("parity_inputs.npz", b"not an npz")):
        src = tmp_path / f"src-{name}"
        shutil.copytree(export, src)
        (src / name).write_bytes(damage)
        assert run_cli(["quantize", str(src), "--out", str(tmp_path / "q")]) == 2
        line = _one_error(capsys)
        assert line.startswith(f"error: {src / name}: does not match the sha256 in {src / 'export.json'}"), line
        assert not (tmp_path / "q").exists()
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    with open(build / "onnx" / "vision.onnx", "r+b") as f:
        f.truncate(1000)
    assert run_cli(["quantize", str(build), "--out", str(tmp_path / "q")]) == 2
    assert _one_error(capsys).startswith(f"error: {build / 'onnx' / 'vision.onnx'}: does not match the sha256 in "
                                         f"{build / 'build.json'} (1000 bytes, ")


@pytest.mark.parametrize("content", ["[]", '{"artifacts": 5}', '"text"', "{}", '{"artifacts": {}}'])
def test_a_manifest_of_the_wrong_shape_is_unreadable_not_unchecked(tmp_path, tiny_build, capsys, content):
    """`prune.json`/`build.json` replaced by valid JSON of another shape turned every sha256 check off."""
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    (build / "build.json").write_text(content)
    assert run_cli(["export", str(build), "--out", str(tmp_path / "e")]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: {build / 'build.json'}: unreadable manifest (") and "was it edited?" in line
    assert not (tmp_path / "e").exists()


def test_a_neuron_group_too_coarse_for_the_mlp_width_is_refused(tmp_path, capsys):
    """`--neuron-group 100000` on the bundled model (640 wide MLPs) pruned 17% under a `--ratio 0.5` label."""
    from mfdeploy.pruning.methods.mope import fitting_group

    for group in ("256", "100000"):
        assert run_cli(["prune", "--ratio", "0.5", "--method", "mope", "--neuron-group", group,
                        "--out", str(tmp_path / "p")]) == 2
        line = _one_error(capsys)
        assert line.startswith(f"error: --neuron-group {group}: the MLPs of the vision tower are 640 wide, so whole "
                               "groups keep "), line
        assert line.endswith("where --ratio 0.5 needs about 50%; use a group of at most 80")
    assert not (tmp_path / "p").exists()
    # what tune uses: the space's group where it fits, an eighth of the narrowest MLP where it does not
    config = {"vision_config": {"intermediate_size": 640}, "text_config": {"intermediate_size": 3072}}
    assert fitting_group(config, 256) == 80 and fitting_group(config, 64) == 64 and fitting_group({}, 256) == 256


@pytest.mark.parametrize("argv, message", [
    (["prune", "--calib-samples", "100000000"], "--calib-samples 100000000: the shapes world holds 1000000 "
                                                "calibration pairs"),
    (["build", "--calib-samples", "1000001"], "--calib-samples 1000001: the shapes world holds 1000000"),
    (["prune", "--method", "random", "--seed", "99999999999999999999999"],
     "--seed 99999999999999999999999: must fit in 64 bits"),
    (["build", "--model", "{tmp}/nonexistent"], "{tmp}/nonexistent: model path does not exist"),  # not "--calib"
    (["build", "--eval", "{tmp}/nonexistent"], "--eval {tmp}/nonexistent: no such file or folder"),  # not --data
])
def test_options_out_of_range_are_refused_before_any_stage(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run_cli([*argv, "--ratio", "0.5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert not any(line.startswith("[") for line in err.splitlines()), err  # no stage started
    assert err.strip().startswith(f"error: {message.replace('{tmp}', str(tmp_path))}"), err
    assert not (tmp_path / "o").exists()


def test_quantize_refuses_more_shapes_pairs_than_the_world_holds(tmp_path):
    from mfdeploy.quantize.run import QuantizeConfig, validate

    with pytest.raises(UserError, match=r"^--calib-samples 2000000: the shapes world holds 1000000"):
        validate(QuantizeConfig(calib_samples=2_000_000))
    assert validate(QuantizeConfig(calib_samples=1_000_000)).kind == "shapes"


def test_a_manifest_without_hashes_is_still_read_as_before(tmp_path):
    """Only the shape is checked: a manifest written before mfdeploy recorded hashes has no `artifacts`."""
    from mfdeploy.models.integrity import manifest_artifacts

    (tmp_path / "build.json").write_text(json.dumps({"model": "m"}))
    assert manifest_artifacts(Path(tmp_path)) is None


def test_an_undecodable_calibration_image_is_named_with_its_line_before_any_stage(tmp_path, capsys):
    """`build --calib` with an image that does not decode failed at the prune stage, after the dense evaluation
    and export, without FILE:LINE."""
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "good.png", "caption": "a red square"}) + "\n"
                     + json.dumps({"image": "bad.png", "caption": "a blue circle"}) + "\n")
    assert run_cli(["build", "--ratio", "0.5", "--calib", str(pairs), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert not any(line.startswith("[") for line in err.splitlines()), err  # no stage started
    assert err.strip().startswith(f"error: {pairs}:2: cannot read image {tmp_path / 'bad.png'}: not a decodable "
                                  "image (UnidentifiedImageError"), err
    assert not (tmp_path / "b").exists()
    # only the pairs a command uses are read: one sample stops before the bad line
    from mfdeploy.data.batching import parse_calib

    assert parse_calib(str(pairs), samples=1) is not None
