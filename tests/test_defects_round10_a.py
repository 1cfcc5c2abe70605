"""MoPE, prune and tune from a user's seat (round 10, helper a): each defect checked on the real command or function."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import save_tiny_clip
from helpers import one_error, run_cli

from mfdeploy.errors import UserError
from mfdeploy.pruning import PruneConfig, prune_model, validate
from mfdeploy.pruning.methods.mope_screen import LayerChoice, Screen


@pytest.fixture(scope="module")
def clip2(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("r10a") / "clip", layers=2)


# ---- a layer's choice ranked exact errors in float32, screening in float64 ----------------------------------------

class _Choice(LayerChoice):
    """A layer choice whose exact errors are given (no model): what `choose` decides from them."""

    def __init__(self, exact: list[float]):
        self.screen, self.values = Screen(torch.nn.Linear(2, 2), False, 2.0), exact

    def exact(self, part, indices):
        return [self.values[j] for j in indices]


def test_a_layers_choice_is_the_same_whether_its_errors_were_screened_or_not():
    """Two errors 2**-30 apart are one float32: the reference (`FAST_SCORING = False`, as the code before screening)
    ranks `torch.tensor(values)` in float32 and keeps the lower index; screening's `top_k` compared the float64
    values and kept the higher error, so screened masks could differ from the reference's. It ranks in float32 too."""
    values = [1.0, 1.0 + 2 ** -30, 0.5]
    exact_only = _Choice(values).choose({"heads": list(values)}, "heads", 1)
    screened = _Choice(values).choose({"heads": list(values), "screened": {"heads": [0, 1, 2]}}, "heads", 1)
    assert exact_only == screened == [0]  # one float32 value: the lower index, as the reference's stable sort


# ---- MoPE on batches of one pair: every error 0, the first modules kept -------------------------------------------

@pytest.mark.parametrize("option,value", [("batch_size", 1), ("calib_samples", 1)])
def test_mope_with_one_pair_per_batch_is_refused_before_any_work(option, value):
    """`mfdeploy prune --method mope --batch-size 1` scored every module 0.0 (CLIP's loss over one pair is 0) and
    kept the first heads and neuron groups of each layer: a pruned model whose choice meant nothing, silently."""
    cfg = PruneConfig(ratio=0.5, method="mope", **{option: value})
    with pytest.raises(UserError, match=rf"^--{option.replace('_', '-')} 1: MoPE measures each module .* at least 2"):
        validate(cfg)
    validate(PruneConfig(ratio=0.5, method="wanda", **{option: value}))  # other methods are not concerned


def test_mope_on_a_jsonl_of_one_pair_is_refused(clip2, shapes_pairs_jsonl, tmp_path):
    one = tmp_path / "one.jsonl"
    line = shapes_pairs_jsonl.read_text().splitlines()[0]
    shutil.copy(shapes_pairs_jsonl.parent / json.loads(line)["image"], tmp_path)
    one.write_text(line + "\n")
    from mfdeploy.models import load

    cfg = PruneConfig(ratio=0.5, model=str(clip2), method="mope", calib=str(one), calib_samples=8, batch_size=4,
                      mope_neuron_group=16, show_progress=False)
    with pytest.raises(UserError, match="^1 calibration pair in batches of 1: MoPE measures"):
        prune_model(load(clip2), cfg)


def test_cli_prune_mope_batch_size_one_is_one_line(tmp_path, capsys):
    assert run_cli(["prune", "--method", "mope", "--ratio", "0.5", "--batch-size", "1", "--out",
                    str(tmp_path / "p")]) == 2
    assert one_error(capsys).startswith("error: --batch-size 1: MoPE measures each module")
    assert not (tmp_path / "p").exists()


def test_a_tune_space_of_mope_with_one_calibration_pair_is_refused(tmp_path):
    from mfdeploy.tuning.space import load_space

    space = tmp_path / "s.toml"
    space.write_text('methods = ["mope"]\nratios = [0.5]\n[calibration]\nsamples = 1\n')
    with pytest.raises(UserError, match=r"samples 1: MoPE needs at least 2 pairs"):
        load_space(str(space), "ort-cpu")
    space.write_text('methods = ["wanda"]\nratios = [0.5]\n[calibration]\nsamples = 1\n')
    assert load_space(str(space), "ort-cpu").calib_samples == 1


# ---- --depth-share 1 (layers only) scored every head and neuron group, all of which it keeps ----------------------

def test_layers_only_mope_scores_no_width_module(clip2, monkeypatch):
    """`mfdeploy prune --method mope --ratio 0.5 --depth-share 1` removes whole layers only: every layer keeps all its
    heads and neuron groups, yet each was scored first (half the run's time on the bundled model, for nothing)."""
    from mfdeploy.models import load
    from mfdeploy.pruning.methods import mope

    def scored(*a, **kw):
        raise AssertionError("a width module was scored")

    monkeypatch.setattr(mope, "width_errors", scored)
    adapter = load(clip2)
    record = prune_model(adapter, PruneConfig(ratio=0.5, model=str(clip2), method="mope", calib="shapes",
                                              calib_samples=4, batch_size=4, mope_neuron_group=32,
                                              mope_depth_share=1.0, show_progress=False))
    assert record["sparsity"]["overall"] == pytest.approx(0.5)
    for tower in ("vision_model", "text_model"):  # one layer of two removed, the other whole (2 heads, 128 wide)
        assert record["structure"][tower]["layers"] == [{"heads": 2, "intermediate": 128}], record["structure"]
    assert {k: v["kept_all"] for k, v in record["mope_width"].items()} == dict.fromkeys(record["mope_width"], True)


# ---- --mope-cache naming a file ------------------------------------------------------------------------------------

def test_a_mope_cache_that_is_a_file_is_refused_before_the_model_loads(tmp_path):
    """`--mope-cache p50/prune.json` loaded the model and the pairs, then said "cannot write p50/prune.json: File
    exists (errno 17)": the file named, not what was wrong with it."""
    f = tmp_path / "prune.json"
    f.write_text("{}")
    with pytest.raises(UserError, match=rf"^--mope-cache {f}: is a file, not a folder"):
        validate(PruneConfig(ratio=0.5, method="mope", mope_cache=f))
    validate(PruneConfig(ratio=0.5, method="mope", mope_cache=tmp_path / "new"))  # a missing folder is made later
    assert f.read_text() == "{}" and not (tmp_path / "new").exists()


# ---- a cache folder that cannot be written: one warning per layer -------------------------------------------------

def test_an_unwritable_mope_cache_warns_once_and_the_run_goes_on(clip2, monkeypatch, tmp_path, caplog):
    """A read-only (or full) `--mope-cache` folder printed a warning for every layer and tower (26 lines on ViT-B/32,
    between the progress lines), each trying the write again."""
    from mfdeploy.models import load
    from mfdeploy.pruning.methods import mope, mope_cache

    tries = []

    def refused(path, data, **kw):
        tries.append(path)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(mope_cache, "write_json", refused)
    monkeypatch.setattr(mope, "SCREEN", False)  # not what is tested: spares the measurement of oneDNN's speed
    record = prune_model(load(clip2), PruneConfig(ratio=0.5, model=str(clip2), method="mope", calib="shapes",
                                                  calib_samples=4, batch_size=4, mope_neuron_group=32,
                                                  mope_cache=tmp_path / "c", show_progress=False))
    warnings = [r.getMessage() for r in caplog.records if "MoPE cache" in r.getMessage()]
    assert len(tries) == 1 and len(warnings) == 1, warnings
    assert "Permission denied" in warnings[0] and warnings[0].endswith("this run goes on without writing to it")
    assert "Permission denied" in record["mope_cache"]["not_written"]
    assert record["mope_cache"]["width_layers"]["scored"] == 4  # the run went on: 2 layers of each tower scored


# ---- prune.json's z_screen did not say when screening never ran ---------------------------------------------------

def test_z_screen_says_why_screening_did_not_run():
    """`--dtype bfloat16` (or `mope.SCREEN = False`) recorded `"screened": 0, "stopped": null`, as a screened run that
    met no module would: the record did not tell that screening never ran, nor why."""
    linear = torch.nn.Linear(2, 2)
    assert Screen(linear.to(torch.bfloat16), None, 1.0).record()["off"].startswith("not a float32 CPU model")
    assert Screen(torch.nn.Linear(2, 2), False, 1.0).record()["off"] == "turned off"
    on = Screen(torch.nn.Linear(2, 2), True, 1.0)
    assert json.loads(json.dumps(on.record())) == on.record()
    if on.on:  # a PyTorch build with oneDNN's linear (this project's)
        assert on.record()["off"] is None and on.record()["stopped"] is None
