"""Defects found in the eleventh hunt by the lead (the helpers' are in test_defects_round11_a.py and _b.py)."""

from __future__ import annotations

import json
import shutil
import sys

from helpers import run_cli


def test_a_tilde_after_an_equals_sign_is_the_home_folder(tiny_clip_dir, shapes_pairs_jsonl, tmp_path, monkeypatch):
    """`prune --out=~/p --calib=~/pairs.jsonl --model=~/ckpt`: no shell expands a `~` after `=`, so the command got
    the `~` itself; prune wrote a folder named `~` into the working directory and refused the calibration file as
    missing. Every path option of every verb takes `~` as the home folder now."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    shutil.copytree(shapes_pairs_jsonl.parent, home / "data")
    shutil.copytree(tiny_clip_dir, home / "ckpt")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert run_cli(["prune", "--model=~/ckpt", "--ratio", "0.5", "--method", "magnitude",
                    "--calib=~/data/pairs.jsonl", "--calib-samples", "4", "--out=~/p"]) == 0
    record = json.loads((home / "p" / "prune.json").read_text())
    assert record["calibration"]["source"] == str(home / "data" / "pairs.jsonl")
    assert list(work.iterdir()) == []  # no folder named "~" here
    assert run_cli(["export", "~/p", "--out=~/e"]) == 0 and (home / "e" / "export.json").is_file()


def test_saved_and_bundled_tokenizers_name_a_class_transformers_4_has(tmp_path):
    """transformers 5 saves a tokenizer built from a bare tokenizer.json as `TokenizersBackend`, a class transformers
    4 lacks: the bundled models and every pruned checkpoint failed to load there ("Tokenizer class
    TokenizersBackend does not exist"). mfdeploy now needs transformers 5.18 (pyproject), but a pruned checkpoint is
    also for other tools, which may run transformers 4. They name
    `PreTrainedTokenizerFast`, which both load (checked by hand on 4.46.3 and 4.57.6: the same masks, bit for bit)."""
    from transformers import AutoTokenizer

    import mfdeploy
    from mfdeploy.zoo import BUNDLED_DIR

    for name in ("clip-shapes", "siglip-shapes"):
        config = json.loads((BUNDLED_DIR.parent / name / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast", name
    adapter = mfdeploy.load()
    adapter.save(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    texts = ["a red circle.", "a big blue square on the left."]
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again(texts)["input_ids"] == adapter.tokenizer(texts)["input_ids"]


def test_build_int8_without_modelopt_makes_the_onnx_runtime_towers(tiny_clip_dir, tmp_path, monkeypatch, caplog):
    """README's CPU recipes (`build ... --int8`, then `serve --backend ort-int8`) were refused on a plain install:
    every --int8 build also made TensorRT's onnx_qdq/, which needs NVIDIA ModelOpt. Without it the build makes
    onnx_int8/ alone, says why in one warning, records it, and builds (or prints) engines from the fp32 towers."""
    import mfdeploy.pipelines.build as build

    monkeypatch.setitem(sys.modules, "modelopt", None)  # as if not installed (onnx itself needs ml_dtypes)
    monkeypatch.setattr(build, "_SAID", set())  # said once a process: this test's process may have said it
    out = tmp_path / "b"
    assert run_cli(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude", "--calib",
                    "shapes", "--calib-samples", "8", "--int8", "--max-batch", "4",
                    "--out", str(out)]) == 0
    warned = [r.getMessage() for r in caplog.records if "onnx_qdq/ (TensorRT's INT8 towers) not made" in r.getMessage()]
    assert len(warned) == 1 and "pip install 'mfdeploy[modelopt]'" in warned[0], caplog.text
    manifest = json.loads((out / "build.json").read_text())
    assert (out / "onnx_int8" / "quantize.json").is_file() and not (out / "onnx_qdq").exists()
    assert set(manifest["quantize"]) == {"onnx_int8"} and set(manifest["quantize_skipped"]) == {"onnx_qdq"}
    assert manifest["parity"]["int8_vs_torch"]["onnx_int8"]["vision"]["passed"]
    assert not manifest["engine"]["int8"] and all("--onnx=onnx/" in c for c in manifest["engine"]["trtexec"])
    assert "onnx_qdq (trt)" in (out / "report.md").read_text()


def test_build_int8_on_a_short_calibration_file_says_so_once(tiny_clip_dir, shapes_pairs_jsonl, tmp_path, caplog):
    """A --calib file shorter than --calib-samples: `build --int8` said so three times (prune, then each of the two
    quantized folders, which calibrate on the same file and count). Once now."""
    assert run_cli(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--calib", str(shapes_pairs_jsonl),
                    "--calib-samples", "16", "--int8", "--max-batch", "4", "--out", str(tmp_path / "b")]) == 0
    short = [r.getMessage() for r in caplog.records if "fewer than --calib-samples 16" in r.getMessage()]
    assert len(short) == 1 and "holds 12 image-caption pairs" in short[0], short
    quantized = json.loads((tmp_path / "b" / "build.json").read_text())["quantize"]
    assert quantized["onnx_int8"]["calibration"]["samples"] == 12  # still calibrated on what the file holds
