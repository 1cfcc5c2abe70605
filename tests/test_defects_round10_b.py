"""Tenth hunt (b): the documented surface executed literally, and the Python API against the CLI."""

from __future__ import annotations

import pytest
import torch

import mfdeploy
from mfdeploy.errors import UserError


def test_prune_takes_a_torch_dtype_as_evaluate_does(tmp_path):
    """`dtype=torch.bfloat16` ended in AttributeError ('torch.dtype' object has no attribute 'strip')."""
    result = mfdeploy.prune(mfdeploy.load(), ratio=0.5, method="magnitude", dtype=torch.float32)
    assert result.record["dtype"] == "float32"
    assert abs(result.sparsity["overall"] - 0.5) < 0.01


@pytest.mark.parametrize(("call", "message"), [
    (lambda: mfdeploy.prune(mfdeploy.load(), ratio=0.5, method="magnitude", progress="yes"),
     "progress 'yes': expected True or False"),
    (lambda: mfdeploy.evaluate(None, retention="yes"), "retention 'yes': expected True or False or 'if known'"),
    (lambda: mfdeploy.export(None, "never", external_data="no"), "external_data 'no': expected None or True or False"),
    (lambda: mfdeploy.export(None, "never", on_step=5), "on_step 5: expected a function taking one line"),
    (lambda: mfdeploy.export(None, "never", opset="17"), "opset '17': must be a whole number, not str"),
    (lambda: mfdeploy.evaluate(None, batch_size="8"), "batch_size '8': must be a positive whole number"),
    (lambda: mfdeploy.evaluate(None, batch_size=float("nan")), "batch_size nan: must be a positive whole number"),
    (lambda: mfdeploy.evaluate(None, batch_size=None), "batch_size None: must be a positive whole number"),
    (lambda: mfdeploy.evaluate(None, n_images=0), "n_images 0: the shapes suite needs a positive number"),
    (lambda: mfdeploy.tune(out="t", pick="1"), "pick '1': expected a trial number"),
])
def test_api_arguments_of_the_wrong_kind_end_in_one_line_naming_them(tmp_path, monkeypatch, call, message):
    """Each was a raw TypeError from deep inside ('<' not supported..., 'int' object is not callable) or was
    taken as truthy (external_data="no" wrote .onnx.data files; retention="yes" ran the dense model)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        call()
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"out": 3}, "out must be a path (str or pathlib.Path), not int"),
    ({"model": 3}, "model must be a hub id or a path (str or pathlib.Path), not int"),
])
def test_tune_names_a_non_path_argument(tmp_path, monkeypatch, kwargs, message):
    """tune(out=3) was os.fspath's TypeError naming no argument; tune(model=3) asked for eval data for "3"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        mfdeploy.tune(**kwargs)


@pytest.mark.parametrize(("setting", "message"), [
    ({"max_delay_ms": float("inf")}, "--max-delay-ms inf: must be a finite number, 0 or more"),
    ({"grace_s": float("inf")}, "--grace-s inf: must be a finite number, 0 or more"),
    ({"max_body_mb": float("inf")}, "--max-body-mb inf: must be a finite number above 0"),
    ({"request_timeout_s": float("inf")}, "--request-timeout inf: must be a finite number above 0"),
])
def test_serve_refuses_an_infinite_setting_saying_why(tmp_path, setting, message):
    """`mfdeploy serve build --max-delay-ms inf` said "--max-delay-ms inf: must be 0 or more", which inf is."""
    from mfdeploy.server.config import ServeConfig

    with pytest.raises(UserError) as e:
        ServeConfig(build_dir=tmp_path, **setting).validate()
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("model", [None, "adapter"])
def test_evaluate_int8_of_a_model_without_a_directory_says_what_to_pass(model):
    """`evaluate(mfdeploy.load(), backend="onnx-int8")` said "<mfdeploy.models.clip.CLIPAdapter object at 0x..>
    has no onnx_int8/ (... `mfdeploy quantize <mfdeploy.models.clip.CLIPAdapter object at 0x..> --in-place`)";
    `mfdeploy eval --backend onnx-int8` said "None has no onnx_int8/"."""
    source = mfdeploy.load() if model == "adapter" else None
    with pytest.raises(UserError) as e:
        mfdeploy.evaluate(source, backend="onnx-int8")
    what = "a model held in memory" if model else "the bundled model"
    assert str(e.value) == ("backend onnx-int8 runs a build's onnx_int8/ (`mfdeploy build --int8`, or `mfdeploy "
                            f"quantize BUILD --in-place`): pass the build directory, not {what}")


def test_export_errors_name_out_dir_not_the_cli_option(tmp_path):
    """`mfdeploy.export(None, folder, force=True)` on a folder mfdeploy did not write said "choose another --out":
    export's argument is `out_dir`."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as e:
        mfdeploy.export(None, tmp_path / "mine", force=True)
    assert str(e.value).endswith("choose another out_dir or empty it yourself") and "--out" not in str(e.value)


def test_save_masks_names_a_non_path_argument(tmp_path):
    """`result.save_masks(5)` was os.fspath's TypeError, naming no argument."""
    result = mfdeploy.PruneResult(masks={}, sparsity={}, record={})
    with pytest.raises(TypeError, match=r"^path must be a path \(str or pathlib.Path\), not int$"):
        result.save_masks(5)




def test_an_in_memory_prune_is_recorded_for_every_adapter_over_the_model():
    """`mfdeploy.prune(model, ...)` then `mfdeploy.export(model, out)` wrote towers whose metadata said
    `mfdeploy.pruned=false`, `mfdeploy.method=dense`, `mfdeploy.ratio=0.0`, and `evaluate` named no pruning: only
    `mfdeploy prune` set the origin, and the API wraps a CLIPModel in a new adapter on each call."""
    from mfdeploy.exporting.model_info import pruning_metadata

    adapter = mfdeploy.load()
    model, kwargs = adapter.model, {"tokenizer": adapter.tokenizer, "processor": adapter.image_processor}
    assert pruning_metadata(mfdeploy.adapter_for(model, **kwargs))["pruned"] == "false"
    mfdeploy.prune(model, ratio=0.5, method="magnitude", **kwargs)  # a CLIPModel, as a notebook holds it
    expected = {"pruned": "true", "method": "magnitude", "ratio": "0.5", "pattern": "unstructured"}
    assert pruning_metadata(mfdeploy.adapter_for(model, **kwargs)) == expected  # what export writes in each tower
    assert pruning_metadata(adapter) == expected  # the adapter over the same module
    assert adapter.pruned_label == "magnitude 0.5 unstructured from mfdeploy/clip-shapes"  # eval's table title


@pytest.mark.parametrize("step", ["prune shapes", "export"])
def test_a_model_without_its_tokenizer_is_named_in_one_line(tmp_path, step):
    """`mfdeploy.prune(clip_model, calib="shapes")` without `tokenizer=`/`processor=` ended in "'NoneType' object is
    not callable", and `mfdeploy.export(clip_model, out)` in "object of type 'NoneType' has no len()"."""
    model = mfdeploy.load().model
    with pytest.raises(UserError) as e:
        if step == "export":
            mfdeploy.export(model, tmp_path / "onnx")
        else:
            mfdeploy.prune(model, ratio=0.5, method="wanda", calib="shapes", calib_samples=4, batch_size=4)
    assert "needs the model's" in str(e.value) and str(e.value).endswith(
        "pass the model's tokenizer= and processor= (or an adapter from mfdeploy.load)")
    assert list(tmp_path.iterdir()) == []


def test_a_tokenizer_that_is_no_tokenizer_is_named():
    """`mfdeploy.prune(clip_model, tokenizer=5, processor=6, calib=pairs)` ended in "'int' object is not callable"."""
    message = r"^tokenizer: expected the model's tokenizer \(a transformers object\), not int$"
    with pytest.raises(UserError, match=message):
        mfdeploy.adapter_for(mfdeploy.load().model, tokenizer=5, processor=6)


def test_save_masks_of_a_structural_prune_refuses_instead_of_writing_an_empty_file(tmp_path):
    """After `mfdeploy.prune(model, method="mope", ...)` (no masks: the weights are removed), `save_masks` wrote a
    248-byte masks file holding no mask, which reads back as "nothing pruned"."""
    result = mfdeploy.PruneResult(masks={}, sparsity={"overall": 0.28}, record={"method": "mope"})
    with pytest.raises(UserError, match=r"^method mope removed what it pruned instead of masking it: there are no"):
        result.save_masks(tmp_path / "masks.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_shapes_sizes_with_other_data_are_refused_not_ignored(tmp_path):
    """`mfdeploy eval --data FOLDER --images 3` (and `evaluate(data=folder, n_images=3)`) scored every image of the
    folder, ignoring the size in silence, as `--template` with the shapes suite is refused."""
    from mfdeploy.cli import main

    with pytest.raises(UserError, match=r"^n_images applies to the shapes suite only; data .* is used whole$"):
        mfdeploy.evaluate(None, data=tmp_path, n_images=3)
    with pytest.raises(SystemExit) as e:
        main(["eval", "--data", str(tmp_path), "--pairs", "3"])
    assert e.value.code == 2


def test_the_api_reference_names_every_public_function():
    """docs/reference/api.md listed what `import mfdeploy` exposes without `tune` and `PruneResult`."""
    from pathlib import Path

    intro = (Path(__file__).parents[1] / "docs" / "reference" / "api.md").read_text().split("::: ")[0]
    assert [n for n in mfdeploy.__all__ if n != "__version__" and f"`mfdeploy.{n}`" not in intro] == []


@pytest.mark.parametrize(("call", "message"), [
    (lambda: mfdeploy.tune(out="t", force="no"), "force 'no': expected True or False"),
    (lambda: mfdeploy.tune(out="t", space=3), "space 3: expected default, quick or the path of a TOML file"),
    (lambda: mfdeploy.export(None, "never", force="no"), "force 'no': expected True or False"),
])
def test_a_truthy_force_or_a_non_path_space_is_refused(tmp_path, monkeypatch, call, message):
    """`mfdeploy.tune(force="no")` started a whole tune (15 minutes) as if force=True; `tune(space=3)` ended in
    os.fspath's TypeError naming no argument."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="^" + message + "$"):
        call()
    assert list(tmp_path.iterdir()) == []
