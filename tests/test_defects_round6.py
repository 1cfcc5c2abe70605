"""Faults a new user hit (a sixth defect hunt): each ends in one line naming it, before the slow work and
before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import one_error as _one_error
from helpers import run_cli

from mfdeploy.errors import UserError
from mfdeploy.exporting.spec import MIN_OPSET, check_opset, max_opset

# ---- options that fail only once the model is loaded --------------------------------------------------------------

def test_an_opset_the_exporter_cannot_write_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """`export --opset 99` loaded the model and traced a tower before torch said it could not write opset 99."""
    newest = max_opset()
    assert newest is not None and newest >= MIN_OPSET  # torch 2.13 names its exporter's newest opset
    check_opset(newest)  # the newest one is fine
    with pytest.raises(UserError, match=rf"^opset {newest + 1} is newer than torch's torchscript exporter writes "
                                        rf"\(up to {newest}\): use --opset {MIN_OPSET}-{newest}$"):
        check_opset(newest + 1)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("mfdeploy.models.load", no_load)
    assert run_cli(["export", "--opset", "99", "--out", str(tmp_path / "e")]) == 2
    assert _one_error(capsys).startswith("error: opset 99 is newer than torch's torchscript exporter writes")
    assert not (tmp_path / "e").exists()


def test_include_globs_that_match_no_layer_fail_at_the_load_stage(tmp_path, capsys):
    """`build --include 'nomatch*'` evaluated and exported the dense model first (26 s on the bundled model,
    minutes on a large one); the message now shows what a layer's name looks like."""
    assert run_cli(["build", "--include", "nomatch*", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    stages = [line.split()[1] for line in err.splitlines() if line.startswith("[")]
    assert stages == ["load"], err  # no stage after it started
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith("error: --include 'nomatch*' matches no prunable layer (of 48, named like "
                           "vision_model.encoder.layers.0.self_attn.q_proj)"), line
    assert not (tmp_path / "b").exists()


# ---- the Python API and the data options ----------------------------------------------------------------------------

def test_one_glob_given_as_a_string_is_one_glob():
    """`prune(model, include="*q_proj")` pruned by the letters '*', 'q', '_', ... (`list("*q_proj")`)."""
    import copy

    import mfdeploy

    model = mfdeploy.load()
    one = mfdeploy.prune(copy.deepcopy(model), ratio=0.5, method="magnitude", include="*q_proj")
    listed = mfdeploy.prune(copy.deepcopy(model), ratio=0.5, method="magnitude", include=["*q_proj"])
    assert one.record["include"] == ["*q_proj"] and sorted(one.masks) == sorted(listed.masks)
    assert len(one.masks) == 8 and all(name.endswith("q_proj.weight") for name in one.masks)
    with pytest.raises(UserError, match=r"^exclude: a glob or a list of globs \(strings\), got \[3\]$"):
        mfdeploy.prune(copy.deepcopy(model), ratio=0.5, method="magnitude", exclude=[3])


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_data_option_is_not_the_current_folder(value, tmp_path, monkeypatch):
    """`eval --data ''` read the current folder as a folder of classes (and scored its sub-folders)."""
    from mfdeploy.eval.datasets import resolve_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match=r"^--data is empty: give 'shapes', a JSONL file or an image folder$"):
        resolve_data(value)


# ---- what a prune is given ------------------------------------------------------------------------------------------

def test_an_already_pruned_model_is_not_pruned_again(tiny_clip_dir, tmp_path, capsys):
    """`prune --model BUILD` pruned the build's pruned/ checkpoint and recorded the new ratio as its sparsity (the
    weights held both masks), with the pruned model as the "dense" baseline of retention."""
    first = tmp_path / "p1"
    assert run_cli(["prune", "--model", str(tiny_clip_dir), "--method", "magnitude", "--ratio", "0.5",
                    "--out", str(first)]) == 0
    capsys.readouterr()
    for source in (first, first / "pruned"):
        assert run_cli(["build", "--model", str(source), "--ratio", "0.3", "--out", str(tmp_path / "again")]) == 2
        line = _one_error(capsys)
        assert line == (f"error: {source} is already pruned (magnitude 0.5 of {tiny_clip_dir}): prune the dense "
                        f"model it came from (--model {tiny_clip_dir}), at the total ratio you want"), line
        assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("args,message", [
    (["--method", "multiflow", "--depth-share", "0.5"], "--depth-share applies with --method mope only"),
    (["--method", "wanda", "--neuron-group", "32"], "--neuron-group applies with --method mope only"),
    (["--method", "magnitude", "--mope-cache", "mc"], "--mope-cache applies with --method mope only"),
    (["--method", "wanda", "--smax-delta", "0.2"], "--smax-delta applies with ECoFLaP's budget"),
    (["--method", "magnitude", "--distill-lr", "1e-3"], "--distill-lr applies with --distill-steps N only"),
    (["--method", "magnitude", "--distill-params", "prunable"], "--distill-params applies with --distill-steps"),
    (["--method", "mope", "--neuron-group", "0"], "--neuron-group 0: must be a positive whole number"),
])
def test_an_option_of_another_method_is_refused_not_ignored(tmp_path, capsys, args, message):
    """Each was silently ignored (exit 0), while --budget with mope was refused."""
    assert run_cli(["prune", "--ratio", "0.5", *args, "--out", str(tmp_path / "p")]) == 2
    assert _one_error(capsys).startswith(f"error: {message}")
    assert not (tmp_path / "p").exists() and not (tmp_path / "mc").exists()


def test_a_local_model_is_recorded_by_its_absolute_path(tiny_clip_dir, tmp_path, monkeypatch):
    """A relative --model was recorded as typed: from another folder, retention looked it up there, or on the hub
    when it read like owner/name."""
    from mfdeploy.models import resolve_checkpoint

    monkeypatch.chdir(tiny_clip_dir.parent)
    where, model_id = resolve_checkpoint(tiny_clip_dir.name)
    assert model_id == str(tiny_clip_dir.resolve()) and where == type(where)(tiny_clip_dir.name)


def test_an_unreadable_weights_file_is_named_as_such(tiny_clip_dir, monkeypatch):
    """A model.safetensors this user may not read (save_pretrained writes 0600) was called truncated or corrupt."""
    import os

    from mfdeploy.models.loader import check_weight_files

    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith(".safetensors") and real(path, mode))
    with pytest.raises(UserError, match=r"model\.safetensors: permission denied: this user cannot read it"):
        check_weight_files(tiny_clip_dir)


@pytest.mark.parametrize("args,message", [
    (["--include", "vision_model.*", "--include", "txt_model.*"], "--include 'txt_model.*' matches no prunable layer"),
    (["--exclude", "nothing*"], "--exclude 'nothing*' matches no prunable layer"),
])
def test_a_glob_that_matches_no_layer_is_refused(tmp_path, capsys, args, message):
    """A glob that matched nothing was recorded in prune.json as applied: a typo in --exclude pruned the layers
    it meant to keep, one in --include left a tower dense."""
    assert run_cli(["prune", "--ratio", "0.5", "--method", "magnitude", *args, "--out", str(tmp_path / "p")]) == 2
    assert _one_error(capsys) == (f"error: {message} (of 48, named like "
                                  "vision_model.encoder.layers.0.self_attn.q_proj)")
    assert not (tmp_path / "p").exists()


def test_a_keep_float_glob_that_matches_no_node_is_refused(tiny_clip_dir, tmp_path, capsys):
    from mfdeploy.pipelines.export import export_model

    export_model(str(tiny_clip_dir), tmp_path / "e", n_parity=2)
    assert run_cli(["quantize", str(tmp_path / "e"), "--out", str(tmp_path / "q"), "--scheme", "dynamic",
                    "--keep-float", "*fc1*", "--keep-float", "typo*"]) == 2
    assert _one_error(capsys).startswith("error: --keep-float 'typo*' matches no weight node of the towers (of ")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("args,message", [
    (["--max-batch", "0"], "error: --max-batch must be 1 or more (got 0)"),
    (["--method", "wanda", "--model", "TINY"], "error: --calib is required for TINY: a JSONL file"),
    (["--method", "magnitude", "--distill-steps", "2", "--model", "TINY"], "error: --calib is required for TINY"),
])
def test_build_checks_these_before_the_first_stage(tiny_clip_dir, tmp_path, capsys, args, message):
    """Each was found only after the dense model was loaded, evaluated and exported (and --max-batch after the
    prune), with a message saying "between 1 and any size"."""
    args = [str(tiny_clip_dir) if a == "TINY" else a for a in args]
    assert run_cli(["build", "--ratio", "0.5", *args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert not [line for line in err.splitlines() if line.startswith("[")], err  # no stage started
    assert err.strip().replace(str(tiny_clip_dir), "TINY").startswith(message), err
    assert not (tmp_path / "b").exists()


def test_the_python_api_names_its_own_arguments(tmp_path):
    """`mfdeploy.prune(model, ratio=0)` said `--ratio 0: ...`; `evaluate(progress=True)` ended in "'bool' object is
    not callable"; `evaluate(dtype=torch.bfloat16)` was refused; an unknown keyword named an internal function."""
    import torch

    import mfdeploy

    model = mfdeploy.load()
    with pytest.raises(UserError, match=r"^ratio 0: must be strictly between 0 and 1$"):
        mfdeploy.prune(model, ratio=0)
    with pytest.raises(UserError, match=r"^mope_depth_share 2: must be between 0"):
        mfdeploy.prune(model, method="mope", mope_depth_share=2)
    with pytest.raises(UserError, match=r"^calib_samples 0: must be positive$"):
        mfdeploy.prune(model, calib_samples=0, method="magnitude")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("mine")
    with pytest.raises(UserError, match=r"pass force=True to replace it"):
        mfdeploy.export(model, tmp_path / "e")
    with pytest.raises(TypeError, match=r"^evaluate\(\) got an unexpected keyword argument 'images'$"):
        mfdeploy.evaluate(model, images=10)
    lines: list[str] = []
    result = mfdeploy.evaluate(model, n_images=8, n_retrieval=8, progress=lines.append, dtype=torch.bfloat16)
    assert result["precision"] == {"vision": "bf16", "text": "bf16"} and lines
    mfdeploy.evaluate(model, n_images=8, n_retrieval=8, progress=True)
    with pytest.raises(UserError, match=r"^progress: True, False or a function"):
        mfdeploy.evaluate(model, progress="yes")


def test_a_scheme_for_tensorrt_is_refused_not_ignored():
    """`quantize --target trt --scheme dynamic` ran static quantization, and quantize.json said static."""
    from mfdeploy.quantize.run import QuantizeConfig, validate

    with pytest.raises(UserError, match=r"^--scheme dynamic applies to --target ort only: --target trt quantizes "
                                        r"statically"):
        validate(QuantizeConfig(target="trt", scheme="dynamic"))
    validate(QuantizeConfig(target="trt", scheme="static"))


def test_an_openvino_precision_this_cpu_lacks_names_the_ones_it_has():
    from mfdeploy.runtime.base import BackendUnavailable
    from mfdeploy.runtime.openvino_runner import resolve_precision

    with pytest.raises(BackendUnavailable, match=r"use --precision auto, bf16 or f32$"):
        resolve_precision("f16", ["BF16", "FP32", "INT8"])
    with pytest.raises(BackendUnavailable, match=r"use --precision auto or f32$"):
        resolve_precision("bf16", ["FP32", "INT8"])


def test_siglip_records_name_only_the_inputs_its_text_graph_takes(tiny_siglip_dir, tmp_path):
    """export.json (and build.json) listed an attention_mask shape for SigLIP's text tower, which takes none."""
    import json

    from mfdeploy.pipelines.export import export_model

    export_model(str(tiny_siglip_dir), tmp_path / "e", n_parity=2)
    towers = json.loads((tmp_path / "e" / "export.json").read_text())["towers"]
    assert set(towers["text"]["example_shapes"]) == {"input_ids"}
    assert set(towers["vision"]["example_shapes"]) == {"pixel_values"}



def test_retention_that_cannot_be_measured_says_why(tiny_clip_dir, tmp_path):
    """A build whose build.json names no dense model ("model": null) lost its retention without a word."""
    import json

    from helpers import make_build

    from mfdeploy.eval import evaluate_with_retention

    build = make_build(tmp_path / "b", tiny_clip_dir, onnx_dense=False)
    manifest = json.loads((build / "build.json").read_text())
    manifest["model"] = None
    (build / "build.json").write_text(json.dumps(manifest))
    result = evaluate_with_retention(build, n_images=8, n_retrieval=8)
    assert "retention" not in result
    assert result["retention_error"] == (f"{build}: its manifest names no dense model (\"model\" is empty), so there "
                                         "is nothing to compare with")


def test_a_second_run_into_the_same_out_is_refused_at_once(tmp_path):
    """Two builds into one --out: the later one did all its work and failed only at the end ("already exists")."""
    import os
    import subprocess
    import sys
    import time

    from mfdeploy.artifacts.io import check_out_dir

    code = ("import sys, time; from pathlib import Path; from mfdeploy.artifacts.tempdirs import make_temp_dir; "
            "make_temp_dir(Path(sys.argv[1]), '.out.tmp-'); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(UserError, match=rf"^{tmp_path / 'out'}: another mfdeploy run is writing it now \(pid "
                                            rf"{proc.pid} on .*, in {tmp_path}/\.out\.tmp-\w+\); wait for it"):
            check_out_dir(tmp_path / "out", force=False)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.1)
    check_out_dir(tmp_path / "out", force=False)  # its folder is stale now: swept, and the path is free
    assert not list(tmp_path.iterdir())
