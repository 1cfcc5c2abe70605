"""A user's own data (round 12, helper a): broken links and colliding names in image folders, tune's distillation
pairs, calibration images decoded before prune and quantize, and several captions of one image in a calibration
batch. Each defect is checked on the real command or function."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import one_error, run_cli
from test_defects_round11_a import _pairs, _png, _truncated_png

from mfdeploy.data import world
from mfdeploy.data.pairs import load_image_folder, load_pairs
from mfdeploy.errors import UserError


def _scenes(folder: Path, n: int, captions_per_image: int = 1, name: str = "pairs.jsonl") -> Path:
    """`n` shapes-world scenes (calibration seeds) as PNGs and a JSONL of them: one caption each, or a list of
    `captions_per_image` (COCO's way), the first the scene's full caption, the others partial ones."""
    rows = []
    for i, seed in enumerate(world.split_seeds("calib", n)):
        scene = world.make_scene(seed)
        if not (folder / f"s{i}.png").exists():
            scene.render().save(folder / f"s{i}.png")
        rng = np.random.default_rng(seed)
        caps = [scene.caption()] + [scene.caption(rng) for _ in range(captions_per_image - 1)]
        rows.append({"image": f"s{i}.png", "caption": caps if captions_per_image > 1 else caps[0]})
    return _pairs(folder, rows, name)


# ---- 1. a broken symbolic link in an image folder -----------------------------------------------------------------

def test_a_broken_link_in_a_class_folder_is_named_with_where_it_points(tiny_clip_dir, tmp_path, capsys):
    """A class folder holding a link to a picture on a disk no longer mounted: `eval --data FOLDER` said
    "photos/dog/c.png: No such file or directory (errno 2)", naming a file `ls` shows as there."""
    data = tmp_path / "photos"
    _png(data / "cat" / "a.png")
    _png(data / "dog" / "b.png", "blue")
    target = tmp_path / "usb" / "gone.png"
    os.symlink(target, data / "dog" / "c.png")
    code = run_cli(["eval", str(tiny_clip_dir), "--data", str(data)])
    assert code == 2
    assert one_error(capsys) == (f"error: {data / 'dog' / 'c.png'} is a broken symbolic link to {target}, which "
                                 "does not exist: restore it or remove the link")


def test_a_broken_relative_link_names_the_path_it_resolves_to(tmp_path):
    """A class folder that is itself a broken link (`bird -> ../gone`) was left out in silence; a relative target is
    named as written and as the absolute path it stands for. A JSONL line's image that is a broken link too."""
    data = tmp_path / "photos"
    _png(data / "cat" / "a.png")
    _png(data / "dog" / "b.png", "blue")
    os.symlink("../gone", data / "bird")
    with pytest.raises(UserError) as e:
        load_image_folder(data)
    assert str(e.value) == (f"{data / 'bird'} is a broken symbolic link to ../gone (that is, {tmp_path / 'gone'}), "
                            "which does not exist: restore it or remove the link")
    os.symlink(tmp_path / "gone.png", tmp_path / "x.png")
    pairs = _pairs(tmp_path, [{"image": "x.png", "caption": "a cat"}])
    with pytest.raises(UserError) as e:
        load_pairs(pairs)
    assert str(e.value) == (f"{pairs}:1: {tmp_path / 'x.png'} is a broken symbolic link to {tmp_path / 'gone.png'}, "
                            "which does not exist: restore it or remove the link")


# ---- 2. class folders that give one prompt ------------------------------------------------------------------------

def test_class_folders_that_give_one_prompt_are_refused(tiny_clip_dir, tmp_path, capsys):
    """`red_car` and `red car` both became the prompt "a photo of a red car.": one class embedding for two classes,
    so every image of the second was scored as the first, and eval printed an accuracy that meant nothing."""
    data = tmp_path / "cars"
    _png(data / "red_car" / "a.png")
    _png(data / "red car" / "b.png")
    _png(data / "blue_car" / "c.png", "blue")
    code = run_cli(["eval", str(tiny_clip_dir), "--data", str(data)])
    assert code == 2
    assert one_error(capsys) == (f"error: {data / 'red car'} and {data / 'red_car'}: two class folders with one "
                                 "prompt ('a photo of a red car.', as '_' reads as a space), which zero-shot "
                                 "classification cannot tell apart: merge them, or rename one")
    (data / "red car" / "b.png").rename(data / "red_car" / "b.png")  # merged: the same images, two classes
    (data / "red car").rmdir()
    assert load_image_folder(data).prompts() == ["a photo of a blue car.", "a photo of a red car."]


# ---- 3. tune: distillation needs 8 calibration pairs ---------------------------------------------------------------

def test_tune_refuses_distillation_on_too_few_pairs_before_it_claims_its_folder(tiny_clip_dir, shapes_pairs_jsonl,
                                                                                tmp_path, capsys):
    """A space with distill_steps and a 5-pair --calib: the tune evaluated the dense model, then each distilling trial
    failed ("--distill-steps needs at least 8 calibration pairs"), and the folder was bound to those settings."""
    calib = _scenes(tmp_path, 5)
    space = tmp_path / "space.toml"
    space.write_text('methods = ["magnitude"]\nratios = [0.5]\nprecisions = ["fp32"]\ndistill_steps = [0, 20]\n')
    out = tmp_path / "t"
    code = run_cli(["tune", "--model", str(tiny_clip_dir), "--calib", str(calib), "--eval", str(shapes_pairs_jsonl),
                    "--space", str(space), "--out", str(out), "--time-budget", "1"])
    assert code == 2
    assert one_error(capsys) == (f"error: the space's distill_steps 20 needs at least 8 calibration pairs (an eighth "
                                 f"is held out); {calib} gives 5: give a longer --calib, or a space with "
                                 "distill_steps = [0] (--space quick)")
    assert not out.exists()


# ---- 4. prune and quantize decode their calibration images first ---------------------------------------------------

@pytest.fixture()
def cut_calib(tmp_path) -> tuple[Path, Path]:
    """A JSONL of 12 pairs whose third image is truncated (its header reads, its pixels do not)."""
    calib = _scenes(tmp_path, 12)
    rows = [json.loads(line) for line in calib.read_text().splitlines()]
    rows[2]["image"] = _truncated_png(tmp_path / "cut.png").name
    return _pairs(tmp_path, rows), tmp_path / "cut.png"


def test_prune_names_a_truncated_calibration_image_before_the_model_loads(tiny_clip_dir, cut_calib, tmp_path,
                                                                          monkeypatch, capsys):
    """Only the header was read up front: the model loaded and calibration began before the image failed."""
    import mfdeploy.pipelines.prune as pipeline

    def no_load(cfg):
        raise AssertionError("the model was loaded before the calibration images were checked")

    monkeypatch.setattr(pipeline, "load_placed", no_load)
    calib, cut = cut_calib
    out = tmp_path / "p"
    code = run_cli(["prune", "--model", str(tiny_clip_dir), "--calib", str(calib), "--method", "wanda",
                    "--ratio", "0.5", "--out", str(out)])
    assert code == 2
    assert one_error(capsys).startswith(f"error: {calib}:3: cannot read image {cut}: not a decodable image (OSError: "
                                        "image file is truncated")
    assert not out.exists()


def test_quantize_names_a_truncated_calibration_image_before_the_model_loads(tiny_clip_dir, cut_calib, tmp_path,
                                                                             monkeypatch, capsys):
    export = tmp_path / "onnx"
    assert run_cli(["export", str(tiny_clip_dir), "--out", str(export)]) == 0
    capsys.readouterr()
    import mfdeploy.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the calibration images were checked")

    monkeypatch.setattr(mfdeploy.models, "load", no_load)
    calib, cut = cut_calib
    out = tmp_path / "q"
    code = run_cli(["quantize", str(export), "--calib", str(calib), "--out", str(out)])
    assert code == 2
    assert one_error(capsys).startswith(f"error: {calib}:3: cannot read image {cut}: not a decodable image (OSError: "
                                        "image file is truncated")
    assert not out.exists()


# ---- 5. several captions of one image in a calibration batch --------------------------------------------------------

def _reference_loss(family: str, logits: torch.Tensor, image_of: list[int]) -> torch.Tensor:
    """The family's hard-target loss with each pair scored as in a batch holding its image once, written out pair by
    pair: the other captions of an image are neither its positive nor its negatives (and, for CLIP, a copy of the
    image is no candidate of its caption)."""
    n = len(image_of)
    keep = [[i == j or image_of[i] != image_of[j] for j in range(n)] for i in range(n)]
    if family == "clip":
        i2t = [-F.log_softmax(logits[i][[j for j in range(n) if keep[i][j]]], 0)[sum(keep[i][:i])] for i in range(n)]
        t2i = [-F.log_softmax(logits[:, j][[i for i in range(n) if keep[i][j]]], 0)[sum(keep[k][j] for k in range(j))]
               for j in range(n)]
        return 0.5 * (torch.stack(i2t).mean() + torch.stack(t2i).mean())
    rows = [sum(F.binary_cross_entropy_with_logits(logits[i, j], torch.tensor(float(i == j)))
                for j in range(n) if keep[i][j]) for i in range(n)]
    return torch.stack(rows).mean()


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_a_pair_is_not_contrasted_with_another_caption_of_its_image(family, tmp_path):
    """A caption list gives one pair per caption, so a batch held the same image several times and the loss (MoPE's
    Z, ECoFLaP's zeroth-order scores) told each copy that one caption was its match and the others, equally true,
    were not (SigLIP: pushed the same logit up and down)."""
    from mfdeploy.models import load
    from mfdeploy.models.inputs import pair_batches, parse_calib
    from mfdeploy.pruning.methods.mope_replay import Z

    adapter = load(f"mfdeploy/{family}-shapes")
    calib = _scenes(tmp_path, 4, captions_per_image=3)
    batches = list(pair_batches(adapter, parse_calib(str(calib)), 12, 6))  # 2 batches of 2 images x 3 captions
    image_of = [0, 0, 0, 3, 3, 3]  # each pair's image: the first row holding it
    z = Z(adapter, batches)
    pairs = adapter.pair_scorer()
    expected = np.mean([float(_reference_loss(family, pairs.logits(img, txt), image_of))
                        for img, txt in zip(z.img, z.txt)])
    assert z.base == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert [b.image_ids.tolist() for b in batches] == [image_of, image_of]


def _ecoflap_masks(calib: Path) -> dict[str, torch.Tensor]:
    from mfdeploy.models import load
    from mfdeploy.pruning.config import PruneConfig
    from mfdeploy.pruning.run import prune_model

    cfg = PruneConfig(ratio=0.5, model="mfdeploy/clip-shapes", method="ecoflap", calib=str(calib), calib_samples=24,
                      batch_size=12, ecoflap_samples=12, show_progress=False)
    return prune_model(load(cfg.model), cfg)["_masks"]


def _old_clip_loss(self, logits, teacher_logits=None, same_image=None):
    """ClipFamily.loss before round 12 (hard targets), word for word: the reference of a file without caption lists."""
    assert teacher_logits is None
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def test_calibration_masks_are_deterministic_and_unchanged_without_caption_lists(tmp_path, monkeypatch):
    """The same caption-list file gives bit-identical masks twice; a file of one caption per image gives the masks it
    gave before (checked by hand against the previous commit too: sha256 of every mask, in name order)."""
    from mfdeploy.models.clip import ClipFamily
    from mfdeploy.models.inputs import pair_batches, parse_calib

    lists = _scenes(tmp_path, 8, captions_per_image=3, name="lists.jsonl")
    first, again = _ecoflap_masks(lists), _ecoflap_masks(lists)
    assert all(torch.equal(first[k], again[k]) for k in first)
    normal = _scenes(tmp_path, 24, name="normal.jsonl")
    from mfdeploy.models import load

    assert all(b.image_ids is None for b in pair_batches(load("mfdeploy/clip-shapes"), parse_calib(str(normal)), 24,
                                                         12))
    now = _ecoflap_masks(normal)
    monkeypatch.setattr(ClipFamily, "loss", _old_clip_loss)
    before = _ecoflap_masks(normal)
    assert now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in now)


def test_mope_refuses_calibration_pairs_of_one_image(tiny_clip_dir, tmp_path):
    """With pairs of one image no longer contrasted with each other, the captions of one image alone leave MoPE's
    loss nothing to measure (every module would score the same): refused, as a batch of one pair is."""
    from mfdeploy.models import load
    from mfdeploy.pruning.config import PruneConfig
    from mfdeploy.pruning.run import prune_model

    calib = _scenes(tmp_path, 1, captions_per_image=4)
    cfg = PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method="mope", calib=str(calib), calib_samples=4,
                      batch_size=4, mope_neuron_group=8, show_progress=False)
    with pytest.raises(UserError) as e:
        prune_model(load(tiny_clip_dir), cfg)
    assert str(e.value) == (f"{calib}: each calibration batch holds captions of one image, which MoPE's loss does not "
                            "contrast with each other (every module would score the same): give pairs of at least 2 "
                            "images")
