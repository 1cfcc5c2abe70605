"""Faults a new user hit (a ninth round, d): a user's own checkpoints of other shapes and dtypes, and the Python API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import colour_pairs, run_cli
from PIL import Image
from transformers import CLIPModel


def _saved_in(src: Path, out: Path, dtype: torch.dtype) -> Path:
    """`src`'s checkpoint saved again in `dtype`, as a user's half-precision checkpoint is."""
    shutil.copytree(src, out)
    CLIPModel.from_pretrained(src).to(dtype).save_pretrained(out)
    return out


def test_a_half_precision_checkpoint_pruned_by_mope_loads_and_evaluates(tmp_path, tiny_clip_dir):
    """`build --model F16 --method mope` ended in a traceback at "evaluate pruned" (c10::Half != float): the pruned
    config.json kept float16 for each tower while the weights were float32, and the structured loader built the towers
    in float16 beside float32 projections."""
    from mfdeploy.models import load

    f16 = _saved_in(tiny_clip_dir, tmp_path / "f16", torch.float16)
    out = tmp_path / "p"
    code = run_cli(["prune", "--model", str(f16), "--ratio", "0.5", "--method", "mope", "--neuron-group", "16",
                    "--calib", "shapes", "--calib-samples", "8", "--batch-size", "8", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "pruned" / "config.json").read_text())
    assert {config["dtype"], config["vision_config"]["dtype"], config["text_config"]["dtype"]} == {"float32"}
    adapter = load(out)
    assert {p.dtype for p in adapter.model.parameters()} == {torch.float32}
    with torch.no_grad():
        image = adapter.vision_tower()(torch.zeros(1, 3, adapter.image_size, adapter.image_size))
        ids, mask = adapter.tokenize(["a red circle"])
        text = adapter.text_tower()(ids, mask)
    assert image.shape == (1, 16) and text.shape == (1, 16) and torch.isfinite(image).all()

    # a structured checkpoint written before (towers' configs saying float16) loads in the dtype of its weights
    old = shutil.copytree(out / "pruned", tmp_path / "old")
    for tower in ("vision_config", "text_config"):
        config[tower]["dtype"] = "float16"
    (old / "config.json").write_text(json.dumps(config))
    assert {p.dtype for p in load(old).model.parameters()} == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_checkpoint_runs_in_float32_on_the_cpu_by_default(tmp_path, tiny_clip_dir, dtype):
    """`eval`, `bench --backends torch` and `tune` ran a float16 (bfloat16) checkpoint as loaded on the CPU, though
    `--dtype` says float32 is the default: `bench BUILD` timed the dense model in float16 against the float32 pruned
    one (pruned/dense 28.7x, precision column "f32 | f16"), and eval scored it ungated in float16."""
    from mfdeploy.eval import evaluate_model
    from mfdeploy.models import load
    from mfdeploy.runtime.torch_runner import TorchRunner

    half = _saved_in(tiny_clip_dir, tmp_path / "half", dtype)
    result = evaluate_model(half, n_images=8, n_retrieval=8)
    assert result["precision"] == {"vision": "f32", "text": "f32"} and "gate" not in result
    adapter = load(half)
    assert next(adapter.model.parameters()).dtype == dtype  # the adapter's own weights stay as loaded
    runner = TorchRunner(adapter)
    assert runner.precision == "f32"
    asked = TorchRunner(adapter, dtype="bfloat16")
    assert asked.precision == "bf16"


def test_an_image_processor_of_another_size_is_refused_in_one_line_before_any_work(tmp_path, tiny_clip_dir, capsys):
    """A checkpoint whose preprocessor_config.json makes 48x48 pictures for a 32x32 model ended `prune`, `export`
    and `eval` in transformers' traceback ("Input image size (48*48) doesn't match model (32*32)"), `build` only
    after evaluating the dense model; the Python API the same with a processor object of another model."""
    from helpers import one_error
    from transformers import CLIPImageProcessor, CLIPTokenizerFast

    import mfdeploy
    from mfdeploy.errors import UserError

    ckpt = shutil.copytree(tiny_clip_dir, tmp_path / "ckpt")
    CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}).save_pretrained(ckpt)
    expected = "the image processor makes 48x48 pictures but the model takes 32x32 (vision_config.image_size)"
    for argv in (["prune", "--model", str(ckpt), "--ratio", "0.5", "--calib", "shapes", "--out", str(tmp_path / "p")],
                 ["export", str(ckpt), "--out", str(tmp_path / "e")]):
        assert run_cli(argv) == 2
        assert expected in one_error(capsys)
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()

    model = CLIPModel.from_pretrained(tiny_clip_dir)
    with pytest.raises(UserError, match=r"makes 224x224 pictures but the model takes 32x32"):
        mfdeploy.prune(model, 0.5, "wanda", calib=[(Image.new("RGB", (32, 32)), "a red circle")] * 4,
                       tokenizer=CLIPTokenizerFast.from_pretrained(tiny_clip_dir), processor=CLIPImageProcessor())
    assert all((p != 0).all() for n, p in model.named_parameters() if n.endswith("fc1.weight"))  # nothing pruned


def test_a_tokenizer_beyond_the_models_vocabulary_is_refused_in_one_line(tmp_path, tiny_clip_dir, capsys):
    """A checkpoint whose tokenizer gives ids past text_config.vocab_size (another model's tokenizer) ended
    `prune` and `eval` in "IndexError: index out of range in self" with a traceback, and `export` in "ONNX export
    of the text tower failed: index out of range in self"."""
    from helpers import one_error
    from transformers import CLIPConfig

    ckpt = shutil.copytree(tiny_clip_dir, tmp_path / "ckpt")
    config = CLIPConfig.from_pretrained(ckpt)
    config.text_config.vocab_size = 8  # the shapes tokenizer has dozens of words
    CLIPModel(config).save_pretrained(ckpt)
    capsys.readouterr()  # save_pretrained's progress bar
    expected = "outside the model's vocabulary of 8 (text_config.vocab_size): use the tokenizer saved with this model"
    for argv in (["prune", "--model", str(ckpt), "--ratio", "0.5", "--calib", "shapes", "--calib-samples", "8",
                  "--out", str(tmp_path / "p")],
                 ["export", str(ckpt), "--out", str(tmp_path / "e")],
                 ["eval", str(ckpt), "--images", "8", "--pairs", "8"]):
        assert run_cli(argv) == 2
        assert expected in one_error(capsys)
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()


def test_tune_resumes_when_called_again_with_pathlib_paths(tmp_path, tiny_clip_dir):
    """`mfdeploy.tune(..., calib=Path(...), eval_data=Path(...))` called a second time (the documented resume, after
    a kill or an exhausted budget) was refused: "holds a tune with different settings (eval: '/x/folder' there,
    PosixPath('/x/folder') now)": the settings file holds text, and a Path never equals it."""
    import mfdeploy

    data = tmp_path / "data"
    colour_pairs(data)
    space = tmp_path / "space.toml"
    space.write_text('methods = ["magnitude"]\nratios = [0.5]\nprecisions = ["fp32"]\ndistill_steps = [0]\n')
    kwargs = dict(out=tmp_path / "tune", calib=data / "pairs.jsonl", eval_data=data, space=str(space),
                  max_drop=100, progress=False)
    first = mfdeploy.tune(tiny_clip_dir, **kwargs)
    again = mfdeploy.tune(tiny_clip_dir, **kwargs)  # resumes the finished tune: the same trials, none run again
    assert [t["number"] for t in again.trials] == [t["number"] for t in first.trials] != []
    journal = (tmp_path / "tune" / "trials.jsonl").read_text().splitlines()
    assert len(journal) == len(first.trials)
    settings = json.loads((tmp_path / "tune" / "tune_settings.json").read_text())
    assert (settings["eval"], settings["calib"]) == (str(data), str(data / "pairs.jsonl"))
