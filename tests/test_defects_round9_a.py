"""Faults a new user hit following the documentation literally (round 9, helper a): each one is what the docs
describe, checked on the real command or function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import one_error, run_cli

from mfdeploy.errors import UserError

# ---- a mistyped folder with the slash a shell's completion adds ---------------------------------------------------

@pytest.mark.parametrize("typed", ["mybuild/", "owner/name/", "my build/x", "a/b:c"])
def test_a_missing_folder_with_a_trailing_slash_is_a_path_not_a_hub_id(tmp_path, monkeypatch, typed):
    """`mfdeploy info nosuchdir/` asked the hub for a model named `nosuchdir/` and ended in "cannot load the config
    of nosuchdir/: the Hugging Face hub cannot be reached ...`hf download nosuchdir/`"; models.md says a name that
    is neither an existing path nor of the form owner/name is refused at once, without asking the hub."""
    from mfdeploy.models import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=rf"^{typed}: model path does not exist$"):
        resolve_checkpoint(typed)
    assert resolve_checkpoint("google/siglip-base-patch16-224") == ("google/siglip-base-patch16-224",) * 2


def test_info_on_a_missing_folder_with_a_slash_names_the_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli(["info", "nosuchdir/"]) == 2
    assert one_error(capsys) == "error: nosuchdir/: model path does not exist"


# ---- a calibration count or batch size out of range names the one at fault ----------------------------------------

@pytest.mark.parametrize("option,value", [("--calib-samples", "0"), ("--batch-size", "-3")])
def test_a_non_positive_calibration_count_names_its_option_and_value(tmp_path, capsys, option, value):
    """`mfdeploy prune --ratio 0.5 --calib-samples 0` said "--calib-samples and --batch-size must be positive":
    two options for one at fault, and not the value; troubleshooting promises the option and the value."""
    out = tmp_path / "p"
    assert run_cli(["prune", "--ratio", "0.5", option, value, "--out", str(out)]) == 2
    assert one_error(capsys) == f"error: {option} {value}: must be positive"
    assert not out.exists()


# ---- a build without onnx_int8/: the command the message gives is the documented one, and it works ---------------

def test_the_missing_int8_hint_is_a_command_that_adds_onnx_int8(tiny_build, tmp_path, capsys):
    """`mfdeploy eval build --backend onnx-int8` on a build made without --int8 said "run `mfdeploy quantize BUILD
    --out BUILD/onnx_int8`" (a placeholder, and not the documented way: build.json and report.md never learn of
    it), and `serve`/`bench` named only a full rebuild; quantize.md's way is `mfdeploy quantize BUILD
    --in-place`. Each now names it with the build's own path, and the command runs as given."""
    import shutil

    build = tmp_path / "b"
    shutil.copytree(tiny_build, build)
    assert run_cli(["eval", str(build), "--backend", "onnx-int8"]) == 2
    line = one_error(capsys)
    hint = f"`mfdeploy quantize {build} --in-place`"
    assert line.endswith(f"(build with --int8, or add it with {hint})"), line
    assert run_cli(["serve", str(build), "--backend", "ort-int8", "--port", "1"]) == 2
    assert one_error(capsys).endswith(f"or add it with {hint}")
    assert run_cli(hint.strip("`").split()[1:] + ["--calib", "shapes", "--calib-samples", "8"]) == 0
    capsys.readouterr()
    assert (build / "onnx_int8" / "vision.onnx").is_file()
    assert run_cli(["eval", str(build), "--backend", "onnx-int8"]) == 0
    # bench times those towers without being asked (--int8 defaults on where they exist), as bench.md now says
    assert run_cli(["bench", str(build), "--backends", "ort-cpu", "--batch-sizes", "1", "--towers", "text",
                    "--warmup", "1", "--iters", "2", "--min-time", "0"]) == 0
    rows = json.loads((build / "bench.json").read_text())
    assert {r.get("variant") for r in rows} == {"pruned", "dense", "int8"}
    intro = (Path(__file__).parents[1] / "docs" / "guides" / "bench.md").read_text().split("\n\n")[1]
    assert "`--no-int8` leaves them out" in intro and "INT8 towers with `--int8`" not in intro


# ---- an export directory where a model is expected ------------------------------------------------------------------

@pytest.mark.parametrize("manifest", ["export.json", "quantize.json", "triton.json"])
def test_an_output_of_mfdeploy_given_as_a_model_says_what_it_is(tmp_path, capsys, manifest):
    """`mfdeploy info p50-onnx` (an export directory) said "p50-onnx: not a model checkpoint (no config.json)", as
    for any folder: troubleshooting promises a message that says what the path is and what was expected."""
    out = tmp_path / "p50-onnx"
    out.mkdir()
    (out / manifest).write_text("{}")
    assert run_cli(["info", str(out)]) == 2
    assert one_error(capsys) == (f"error: {out}: an output of mfdeploy ({manifest}), not a model checkpoint: pass "
                                  "the checkpoint, prune or build directory it was made from")
    (tmp_path / "plain").mkdir()
    assert run_cli(["info", str(tmp_path / "plain")]) == 2
    assert one_error(capsys).endswith("plain: not a model checkpoint (no config.json)")


# ---- an export made with a relative model path, served from another folder -----------------------------------------

def test_an_export_names_its_local_model_so_that_it_is_found_from_any_folder(tiny_clip_dir, tmp_path, monkeypatch,
                                                                            capsys):
    """`mfdeploy export p50 --out p50-onnx`, then `mfdeploy serve /abs/p50-onnx` from another folder: "the model it
    was exported from, p50/pruned, is not in the Hugging Face cache here ... `huggingface-cli download
    p50/pruned`": export.json recorded the checkpoint relative to where export ran, and serve took it for a hub
    id. It is recorded absolute now."""
    import shutil

    from mfdeploy.server.source import _checkpoint

    work = tmp_path / "work"
    shutil.copytree(tiny_clip_dir, work / "my-clip")
    monkeypatch.chdir(work)
    assert run_cli(["export", "my-clip", "--out", "onnx"]) == 0
    capsys.readouterr()
    source = json.loads((work / "onnx" / "export.json").read_text())["model"]["source"]
    assert source == str((work / "my-clip").resolve())
    monkeypatch.chdir(tmp_path)
    assert _checkpoint(source, work / "onnx") == work / "my-clip"
