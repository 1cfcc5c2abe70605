"""Faults a new user hit (a defect hunt over tune, the loaders and the data files): each ends in one line naming
it, before anything is written, and a tune directory keeps what mfdeploy did not write."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import one_error, run_cli

from mfdeploy.errors import UserError
from mfdeploy.tuning import journal
from mfdeploy.tuning.space import load_space

TINY = 'methods = ["magnitude"]\nratios = [0.5]\nprecisions = ["fp32"]\ndistill_steps = [0]\n'


# ---- a mistyped model path ----------------------------------------------------------------------------------------

def test_a_bare_name_that_is_no_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    """`mfdeploy eval mybuild` (a typo of a local folder) spent 30 s in hub retries before a message about
    connecting to huggingface.co; a path under a folder that exists (a tune's best/ not made yet) likewise."""
    from mfdeploy.models import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^mybuild: no such file or directory \(a Hugging Face model id has the "
                                        r"form owner/name"):
        resolve_checkpoint("mybuild")
    (tmp_path / "t1").mkdir()
    with pytest.raises(UserError, match=r"^t1/best: model path does not exist$"):
        resolve_checkpoint("t1/best")
    assert resolve_checkpoint("openai/clip-vit-base-patch32") == ("openai/clip-vit-base-patch32",) * 2  # a hub id


# ---- tune: what it checks before it claims the directory ----------------------------------------------------------

@pytest.mark.parametrize("option,value,message", [
    ("--eval", "nope.jsonl", "error: --eval nope.jsonl: no such file or folder"),
    ("--calib", "mycal.jsonl", "error: mycal.jsonl: calibration/evaluation file does not exist"),
])
def test_bad_tune_data_is_refused_before_the_directory_is_claimed(tmp_path, capsys, monkeypatch, option, value,
                                                                  message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    assert run_cli(["tune", "--space", "tiny.toml", "--out", "t", option, value]) == 2
    assert one_error(capsys).startswith(message)
    assert not (tmp_path / "t").exists()  # the corrected command then starts a fresh tune


def test_a_folder_with_someone_elses_trials_jsonl_is_not_a_tune_directory(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print(1)")
    (tmp_path / journal.TRIALS).write_text('{"epoch": 1, "loss": 0.3}\n')
    assert run_cli(["tune", "--out", str(tmp_path), "--force"]) == 2
    assert "not empty and not a tune directory" in one_error(capsys)
    assert (tmp_path / "src" / "main.py").is_file() and (tmp_path / journal.TRIALS).read_text().startswith('{"epoch"')


def test_force_deletes_nothing_when_a_tune_directory_holds_a_file_mfdeploy_did_not_write(tmp_path):
    from mfdeploy.tuning.run import _written

    (tmp_path / journal.SETTINGS).write_text("{}")
    (tmp_path / "work").mkdir()
    (tmp_path / ".best.tmp-1234").mkdir()  # a killed run's temporary folder: mfdeploy's
    (tmp_path / "mydata").mkdir()
    with pytest.raises(UserError, match=r"holds files mfdeploy did not write \(mydata\); move them out first"):
        journal.start_over(tmp_path, _written())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".best.tmp-1234", journal.SETTINGS, "mydata", "work"])
    (tmp_path / "mydata").rmdir()
    journal.start_over(tmp_path, _written())
    assert list(tmp_path.iterdir()) == []


# ---- the journal --------------------------------------------------------------------------------------------------

def _record(number: int, key: str, state: str) -> dict:
    config = dict(method="magnitude", ratio=0.5, precision="fp32", budget=None, pattern=None, distill_steps=0)
    done = {"quality": {"retention": 0.99, "drop_points": 0.5}, "speed": {"speedup": 1.0, "latency_ms": 5.0},
            "size_mb": 1.0, "build": "work/builds/x"} if state == "complete" else {"reason": "it failed"}
    return {"number": number, "key": key, "config": config, "state": state, "seconds": {"total": 1.0}, **done}


def test_a_journal_line_that_is_json_but_not_a_whole_trial_is_named_and_skipped(tmp_path):
    lines = [_record(0, "a", "complete"), {"key": "x", "state": "complete"}, {**_record(1, "b", "complete"),
                                                                             "speed": {}}]
    (tmp_path / journal.TRIALS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    warned: list[str] = []
    assert [r["key"] for r in journal.read_records(tmp_path, warned.append)] == ["a"]
    assert len(warned) == 2 and "line 2 is not a trial record" in warned[0] and "line 3 " in warned[1]


def test_a_failed_trial_recorded_again_counts_by_its_later_record(tmp_path):
    lines = [_record(0, "a", "failed"), _record(1, "b", "complete"), _record(2, "a", "complete"),
             _record(3, "b", "failed")]
    (tmp_path / journal.TRIALS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = journal.read_records(tmp_path, print)
    assert [(r["number"], r["key"], r["state"]) for r in records] == [(1, "b", "complete"), (2, "a", "complete")]


# ---- the space file -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,message", [
    ('[mope]\nneuron_group = "abc"\n', r"\[mope\] neuron_group 'abc' must be a positive whole number"),
    ("[mope]\nneuron_group = -5\n", r"\[mope\] neuron_group -5 must be a positive whole number"),
    ("[mope]\ndepth_share = 7\n", r"\[mope\] depth_share 7 must be between 0 \(width only\) and 1"),
    ("[calibration]\nsample = 16\n", r"\[calibration\] 'sample' is not an option \(samples\)"),
    ("[calibration]\nsamples = true\n", r"\[calibration\] samples must be a positive whole number"),
])
def test_mope_and_calibration_values_are_checked_when_the_space_is_read(tmp_path, extra, message):
    path = tmp_path / "s.toml"
    path.write_text(TINY + extra)
    with pytest.raises(UserError, match=message):
        load_space(str(path), "ort-cpu")


def test_a_boolean_step_count_and_repeated_entries(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TINY.replace("distill_steps = [0]", "distill_steps = [true]"))
    with pytest.raises(UserError, match="distill_steps True must be whole numbers"):
        load_space(str(path), "ort-cpu")
    path.write_text('methods = ["magnitude", "magnitude"]\nratios = [0.5, 0.5]\nprecisions = ["fp32", "fp32"]\n'
                    "distill_steps = [0]\n")
    space = load_space(str(path), "ort-cpu")
    assert space.size() == 1 and space.methods == ("magnitude",) and space.ratios == (0.5,)
    path.write_text(TINY.replace("ratios = [0.5]", "ratios = [0.5, 0.50000001]"))
    with pytest.raises(UserError, match=r"two entries of a list name the same candidate \(magnitude r=0.5 fp32\)"):
        load_space(str(path), "ort-cpu")


# ---- the serve command of the pick --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,precision,tail", [
    ("openvino", "fp32", "--backend openvino --precision f32"),  # auto would run bf16 on a BF16 CPU
    ("openvino", "bf16", "--backend openvino --precision bf16"),
    ("openvino", "int8", "--backend openvino-int8"),
    ("ort-cpu", "int8", "--backend ort-int8"),
    ("torch", "bf16", "--backend torch --dtype bfloat16"),
    ("torch-cuda", "fp16", "--backend torch-cuda"),  # float16: the torch-cuda runner's default
])
def test_the_serve_command_serves_the_precision_that_was_measured(backend, precision, tail):
    from mfdeploy.cli.reference import command
    from mfdeploy.tuning.outputs import serve_command

    line = serve_command(SimpleNamespace(backend=backend, out=Path("t")), {"config": {"precision": precision}})
    assert line == f"mfdeploy serve {Path('t') / 'best'} {tail}"
    command.make_context("mfdeploy", line.split()[1:])  # a command line the CLI takes


def test_torch_cuda_is_tuned_in_the_precision_its_runner_serves():
    from mfdeploy.tuning.measure import EVAL, runner_options
    from mfdeploy.tuning.space import BACKEND_PRECISIONS, SPACES

    assert BACKEND_PRECISIONS["torch-cuda"] == ("fp16",)
    assert load_space("default", "torch-cuda").precisions == ("fp16",) and "default" in SPACES
    assert EVAL[("torch-cuda", "fp16")] == ("torch", {"device": "cuda", "dtype": "float16"})
    assert runner_options("torch-cuda", "fp16") == ("pruned", {"dtype": None})  # the runner's float16


def test_float16_is_a_dtype_of_cuda_towers_only():
    import torch

    from mfdeploy.runtime.torch_runner import check_dtype

    assert check_dtype("float16", cuda=True) is torch.float16
    with pytest.raises(UserError, match=r"--dtype float16: choose one of float32, bfloat16 \(float16: on a CUDA "
                                        r"device only\)"):
        check_dtype("float16")


# ---- data files ---------------------------------------------------------------------------------------------------

def test_a_jsonl_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    from PIL import Image

    from mfdeploy.data.pairs import load_pairs

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "bom.jsonl").write_text('{"image": "a.png", "caption": "a square"}\n', encoding="utf-8-sig")
    assert [p.caption for p in load_pairs(tmp_path / "bom.jsonl")] == ["a square"]


# ---- determinism --------------------------------------------------------------------------------------------------

def test_the_same_masks_make_the_same_file_in_two_processes(tmp_path):
    """safetensors writes header metadata in a hash map's order, which differs between processes: the masks file
    of two runs with the same seed differed in its header bytes. It holds one metadata entry now."""
    import subprocess
    import sys

    script = ("import sys, torch; from pathlib import Path; from mfdeploy.pruning.masks import save_masks; "
              "save_masks(Path(sys.argv[1]), {'b.weight': torch.ones(3, dtype=torch.bool), "
              "'a.weight': torch.zeros(2, dtype=torch.bool)}, "
              "{'method': 'magnitude', 'ratio': 0.5, 'pattern': None, 'model_id': 'm', 'seed': 0})")
    for name in ("one", "two", "three"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True)
    data = (tmp_path / "one").read_bytes()
    assert (tmp_path / "two").read_bytes() == data and (tmp_path / "three").read_bytes() == data

    from mfdeploy.pruning.masks import load_masks

    masks, meta = load_masks(tmp_path / "one")
    assert meta["method"] == "magnitude" and json.loads(meta["ratio"]) == 0.5 and meta["pattern"] == "null"
    assert masks["b.weight"].all() and not masks["a.weight"].any()


def test_pick_refuses_the_options_of_a_new_search(tmp_path, capsys):
    """They were ignored (`--out elsewhere` built into the tune's own best/, `--model bogus` went unread)."""
    assert run_cli(["tune", str(tmp_path), "--pick", "0", "--out", "x", "--model", "bogus"]) == 2
    assert one_error(capsys) == (f"error: --model, --out: options of a new search; --pick rebuilds trial 0 of "
                                  f"{tmp_path} with the settings it was measured with (drop them)")


# ---- the Python API -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled():
    import mfdeploy

    return mfdeploy.load()


@pytest.mark.parametrize("kwargs,message", [
    (dict(calib=[("x.png", "a cat")]), r"calib: pair 0 is not \(PIL image, caption\) but \('x.png', 'a cat'\)"),
    (dict(calib=["a", "b"]), r"calib: pair 0 is not \(PIL image, caption\) but 'a'"),
    (dict(calib=[{"pixel_values": "p"}]), r"calib: batch 0 needs pixel_values and input_ids tensors"),
    (dict(ratio="0.5", method="magnitude"), r"ratio '0.5': must be a number, not str"),
    (dict(calib_samples=8.5), r"calib_samples 8.5: must be a whole number, not float"),
])
def test_python_prune_names_a_bad_argument_in_one_line(bundled, kwargs, message):
    """They ended in a KeyError, an IndexError, a TypeError or an image decoder's AttributeError."""
    import mfdeploy

    with pytest.raises(UserError, match=message):
        mfdeploy.prune(bundled, **kwargs)


def test_python_tune_names_a_bad_argument_in_one_line(tmp_path):
    import mfdeploy

    with pytest.raises(UserError, match=r"time_budget '5': must be a number, not str"):
        mfdeploy.tune(out=tmp_path / "t", time_budget="5")
    assert not (tmp_path / "t").exists()


# ---- bench options ------------------------------------------------------------------------------------------------

def test_a_backend_named_twice_is_timed_once():
    from mfdeploy.bench import parse_list

    assert parse_list("ort-cpu,torch,ort-cpu", "backends", ["ort-cpu", "torch"]) == ["ort-cpu", "torch"]
