"""A user's own data and models in eval, tune, prune and quantize (round 11, helper a): each defect checked on the
real command or function."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error, run_cli
from PIL import Image

from mfdeploy.data.pairs import load_image_folder, load_pairs
from mfdeploy.errors import UserError
from mfdeploy.eval.datasets import pairs_set, resolve_data

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, colour="red", size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _pairs(folder: Path, rows: list[dict], name: str = "pairs.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- image folders: hidden files, images in sub-folders ------------------------------------------------------------

def test_hidden_files_in_a_class_folder_are_not_read_as_images(tiny_clip_dir, tmp_path, capsys):
    """A class folder copied from a Mac to a USB disk holds `._a.png` beside `a.png` (AppleDouble metadata, not an
    image): `eval --data FOLDER` stopped on it ("not a decodable image"); `.DS_Store`-like hidden files too."""
    data = tmp_path / "photos"
    _png(data / "cat" / "a.png", "red")
    _png(data / "dog" / "b.png", "blue")
    (data / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    (data / "dog" / ".hidden.png").write_bytes(b"not an image")
    _png(data / "dog" / ".thumbnails" / "b.png", "blue")  # a hidden folder's pictures are no class's images
    (data / "dog" / "notes.txt").write_text("a file that is no image")
    assert [p.name for p, _ in load_image_folder(data).items] == ["a.png", "b.png"]
    code = run_cli(["eval", str(tiny_clip_dir), "--data", str(data)])
    assert code == 0, capsys.readouterr().err
    assert "photos" in capsys.readouterr().out


def test_images_in_sub_folders_of_a_class_count(tmp_path):
    """`cat/2019/x.jpg` (torchvision's ImageFolder finds it) was left out in silence, and a class folder whose
    images are all in sub-folders was refused as holding none."""
    data = tmp_path / "photos"
    _png(data / "cat" / "top.png")
    _png(data / "cat" / "2019" / "nested.png")
    _png(data / "dog" / "2020" / "only.png")
    ds = load_image_folder(data)
    assert sorted((p.relative_to(data).as_posix(), label) for p, label in ds.items) == [
        ("cat/2019/nested.png", 0), ("cat/top.png", 0), ("dog/2020/only.png", 1)]
    (data / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: class folder holds no images \(\.bmp, .*\.webp\)$"):
        load_image_folder(data)


def test_a_symbolic_link_loop_in_a_class_folder_ends(tmp_path):
    data = tmp_path / "photos"
    _png(data / "cat" / "a.png")
    _png(data / "dog" / "b.png")
    (data / "cat" / "again").symlink_to(data / "cat", target_is_directory=True)
    assert [p.name for p, _ in load_image_folder(data).items] == ["a.png", "b.png"]


# ---- JSONL pairs: a list of captions, wrong types, where relative paths are read from ------------------------------

def test_a_list_of_captions_is_one_pair_per_caption(tmp_path):
    """COCO's five captions per image, written as `"caption": [...]`, were refused as "missing or empty 'caption'"."""
    _png(tmp_path / "a.png", "red")
    _png(tmp_path / "b.png", "blue")
    path = _pairs(tmp_path, [{"image": "a.png", "caption": ["a red square", "something red"]},
                             {"image": "b.png", "caption": "a blue square"}])
    pairs = load_pairs(path)
    assert [(p.image.name, p.caption, p.line) for p in pairs] == [
        ("a.png", "a red square", 1), ("a.png", "something red", 1), ("b.png", "a blue square", 2)]
    evalset = pairs_set(path)
    assert evalset.counts()["retrieval_images"] == 2 and evalset.captions == (
        "a red square", "something red", "a blue square")
    assert evalset.pairs == ((0, 0), (0, 1), (1, 2))


@pytest.mark.parametrize("row,message", [
    ({"image": "a.png", "caption": 5}, ":1: 'caption' is a number (5); expected a string, or a list of strings"),
    ({"image": "a.png", "caption": ["ok", ""]}, ":1: 'caption' is a list, and each of its items must be a "
                                                "non-empty string"),
    ({"image": "a.png", "caption": []}, ":1: 'caption' is a list, and each of its items must be a non-empty"),
    ({"image": ["a.png"], "caption": "x"}, ":1: 'image' is a list ([\"a.png\"]); expected a string (the image"),
    ({"image": "a.png", "text": "x"}, ":1: missing or empty 'caption' (the line has 'image', 'text')"),
    ({"image": "a.png", "caption": " "}, ":1: missing or empty 'caption'"),
])
def test_a_field_of_the_wrong_kind_is_named_as_such(tmp_path, row, message):
    """A number, a list or an object in 'caption'/'image' was "missing or empty", which it is not."""
    _png(tmp_path / "a.png")
    path = _pairs(tmp_path, [row])
    with pytest.raises(UserError) as e:
        load_pairs(path)
    assert str(e.value).startswith(f"{path}{message}"), str(e.value)


def test_an_image_path_written_from_the_current_folder_says_where_it_was_looked_for(tmp_path, monkeypatch, capsys):
    """`data/pairs.jsonl` listing `data/img/a.png` (a path from where the user runs, not from the file) said only
    "image data/img/a.png does not exist", though the user can see it there."""
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "data" / "img" / "a.png")
    _pairs(tmp_path / "data", [{"image": "data/img/a.png", "caption": "a red square"}])
    code = run_cli(["eval", "--data", "data/pairs.jsonl"])
    assert code == 2
    looked = tmp_path / "data" / "data" / "img" / "a.png"
    assert one_error(capsys) == (
        f"error: data/pairs.jsonl:1: image data/img/a.png does not exist: relative image paths are read from the "
        f"JSONL file's folder, so this is {looked} (it exists from the current folder, not from the file's); write "
        "paths relative to data/ or absolute")


def test_captions_holding_unicode_line_separators_are_one_line(tmp_path):
    """`json.dumps(row, ensure_ascii=False)` writes U+2028 raw (web captions hold it), and U+0085 is a C1 control
    JSON needs not escape: `str.splitlines()` cut the line there, "invalid JSON (Unterminated string)"."""
    _png(tmp_path / "a.png")
    path = _pairs(tmp_path, [{"image": "a.png", "caption": "a cat\u2028on a mat"},
                             {"image": "a.png", "caption": "a dog\x85 in a fog"}])
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert [(p.caption, p.line) for p in load_pairs(path)] == [("a cat\u2028on a mat", 1), ("a dog\x85 in a fog", 2)]


def test_a_utf16_file_with_its_bom_is_read(tmp_path):
    """Windows PowerShell 5's `>` writes UTF-16 LE with a BOM: "unreadable ('utf-8' codec can't decode ...)"."""
    _png(tmp_path / "a.png")
    path = tmp_path / "ps.jsonl"
    path.write_text(json.dumps({"image": "a.png", "caption": "a red square"}) + "\r\n", encoding="utf-16")
    assert path.read_bytes()[:2] == b"\xff\xfe"
    assert [p.caption for p in load_pairs(path)] == ["a red square"]
    (tmp_path / "bad.jsonl").write_bytes(b"\xc3\x28")
    with pytest.raises(UserError, match=r"bad\.jsonl: unreadable \(.*\); save it as UTF-8$"):
        load_pairs(tmp_path / "bad.jsonl")


# ---- eval: recall@k over k or fewer candidates; an image replaced between two evaluations --------------------------

def _records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "100%" in r.getMessage()]


def test_recall_at_5_of_three_pairs_says_it_is_100_whatever_the_model(tiny_siglip_dir, tmp_path, caplog):
    """`eval --data` on a JSONL of 3 pairs printed R@5 100.0% with no word: 3 captions always rank within the top 5.
    A SigLIP model, as a user's own; the numbers stay (their definition), the warning says what they are worth."""
    import mfdeploy

    for colour in ("red", "green", "blue"):
        _png(tmp_path / f"{colour}.png", colour)
    path = _pairs(tmp_path, [{"image": f"{c}.png", "caption": f"a {c} square"} for c in ("red", "green", "blue")])
    with caplog.at_level(logging.WARNING, logger="mfdeploy"):
        result = mfdeploy.evaluate(str(tiny_siglip_dir), data=path)
    assert result["retrieval"]["i2t_r5"] == result["retrieval"]["t2i_r5"] == 1.0
    assert _records(caplog) == [
        f"warning: {path} holds 3 distinct captions and 3 images: i2t R@5 and t2i R@5 are 100% whatever the model "
        "(no more than k to rank); use more than 5 of each for a meaningful score"]


def test_recall_over_more_candidates_than_k_says_nothing(tiny_clip_dir, shapes_pairs_jsonl, caplog):
    import mfdeploy

    with caplog.at_level(logging.WARNING, logger="mfdeploy"):
        mfdeploy.evaluate(str(tiny_clip_dir), data=shapes_pairs_jsonl)
    assert _records(caplog) == []
    assert resolve_data(shapes_pairs_jsonl).trivial_recalls() == []


def test_an_image_replaced_between_two_evaluations_is_read_again(tiny_clip_dir, tmp_path):
    """`mfdeploy.evaluate(model, "pairs.jsonl")`, an image re-cropped, the same call again: the second result was
    the first one's, from pixels cached under the JSONL file's stamp alone (an image folder's key held its images')."""
    from mfdeploy.eval.prepare import clear_cache, prepare
    from mfdeploy.models import load

    clear_cache()
    adapter = load(tiny_clip_dir)
    _png(tmp_path / "a.png", "red", (32, 32))
    _png(tmp_path / "b.png", "blue", (32, 32))
    path = _pairs(tmp_path, [{"image": "a.png", "caption": "a red square"},
                             {"image": "b.png", "caption": "a blue square"}])
    before = prepare(adapter, pairs_set(path)).retrieval_pixels.copy()
    _png(tmp_path / "a.png", "green", (40, 40))  # another picture, another size: another stamp however fast
    after = prepare(adapter, pairs_set(path)).retrieval_pixels
    assert not np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


# ---- quantize: --calib-samples 0 --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, -3])
def test_quantize_calib_samples_names_its_option(value):
    """`quantize --calib-samples 0` said "calibration sample count (0) and batch size (32) must be positive": no
    option named, and a batch size `quantize` has no option for."""
    from mfdeploy.quantize.run import QuantizeConfig, validate

    with pytest.raises(UserError) as e:
        validate(QuantizeConfig(calib_samples=value))
    assert str(e.value) == f"--calib-samples {value}: must be positive"


# ---- build --int8 / tune: ONNX Runtime's quantizer left a root handler behind ----------------------------------------

def test_quantizing_leaves_mfdeploys_warnings_one_plain_line():
    """ONNX Runtime's static quantizer calls `logging.info`, which installs a root handler when there is none: every
    later warning of `build --int8` (and of a tune after its first INT8 candidate) printed as
    `WARNING:mfdeploy.pipelines.build:warning: ...`. In a process of its own, as the CLI runs."""
    code = ("import logging\n"
            "from mfdeploy.quantize.ort import quiet\n"
            "for verbose in (False, True):\n"
            "    with quiet(verbose):\n"
            "        logging.info('the quantizer talks')\n"
            "    logging.getLogger('mfdeploy.pipelines.build').warning('warning: after quantizing %s', verbose)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "after quantizing" in line]
    assert lines == ["warning: after quantizing False", "warning: after quantizing True"], proc.stderr


# ---- tune: calibration images decoded before the search; a short file said once -----------------------------------

def _truncated_png(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header reads; the pixels do not
    return path


def test_tune_refuses_a_truncated_calibration_image_before_it_claims_its_folder(tiny_clip_dir, shapes_pairs_jsonl,
                                                                               tmp_path, capsys):
    """A truncated image in `--calib` passed the header check; the tune evaluated the dense model, then every trial
    failed on it ("[1/8] ... failed: ...:2: cannot read image"), and the folder was left bound to the settings."""
    _png(tmp_path / "a.png")
    _truncated_png(tmp_path / "cut.png")
    calib = _pairs(tmp_path, [{"image": "a.png", "caption": "a red square"}, {"image": "cut.png", "caption": "x"}])
    out = tmp_path / "t"
    code = run_cli(["tune", "--model", str(tiny_clip_dir), "--calib", str(calib), "--eval", str(shapes_pairs_jsonl),
                    "--space", "quick", "--out", str(out)])
    assert code == 2
    assert one_error(capsys).startswith(f"error: {calib}:2: cannot read image {tmp_path / 'cut.png'}: not a "
                                        "decodable image (OSError: image file is truncated")
    assert not out.exists()


def test_tune_says_once_that_its_calibration_file_is_short(tiny_clip_dir, shapes_pairs_jsonl):
    """Each prune of a tune warned "holds 12 image-caption pairs, fewer than --calib-samples 32" (an option tune does
    not have), once per trial; the tune now says it once and asks each prune for the pairs there are."""
    from mfdeploy.tuning import measure, run
    from mfdeploy.tuning.config import TuneConfig
    from mfdeploy.tuning.space import load_space

    space = load_space("quick", "ort-cpu")
    cfg = TuneConfig(out=Path("unused"), model=str(tiny_clip_dir), calib=str(shapes_pairs_jsonl))
    said: list[str] = []
    run._check_data(cfg, str(shapes_pairs_jsonl), space, said.append)
    assert said == [f"warning: {shapes_pairs_jsonl} holds 12 image-caption pairs, fewer than the space's "
                    "[calibration] samples 32: every prune calibrates on 12"]
    assert measure.calib_samples(str(shapes_pairs_jsonl), space) == 12
    assert measure.calib_samples(None, space) == 32  # the shapes world holds any number


def test_tune_with_mope_refuses_a_calibration_file_of_one_pair(tiny_clip_dir, tmp_path, shapes_pairs_jsonl):
    from mfdeploy.tuning import run
    from mfdeploy.tuning.config import TuneConfig
    from mfdeploy.tuning.space import load_space

    _png(tmp_path / "a.png")
    calib = _pairs(tmp_path, [{"image": "a.png", "caption": "a red square"}])
    cfg = TuneConfig(out=tmp_path / "t", model=str(tiny_clip_dir), calib=str(calib))
    with pytest.raises(UserError, match=r"^--calib .*pairs\.jsonl \(one pair\): MoPE measures each module .* "
                                        r"give at least 2 pairs per batch, or use a space without mope$"):
        run._check_data(cfg, str(shapes_pairs_jsonl), load_space("quick", "ort-cpu"), lambda line: None)
