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
