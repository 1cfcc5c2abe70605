"""The Python API over in-memory models: README's example as written, and each entry point on a tiny model."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

import mfdeploy
from mfdeploy.errors import UserError
from mfdeploy.pipelines.prune import run_prune
from mfdeploy.pruning import PruneConfig, prune_model

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    section = README.read_text().split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_example(), "README.md", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "sparsity 0.500" in out
    assert float(re.search(r"min cosine: ([0-9.]+)", out).group(1)) >= 0.999
    assert (tmp_path / "masks.safetensors").is_file() and (tmp_path / "onnx_pruned" / "vision.onnx").is_file()


def hf_parts(path: Path):
    return (CLIPModel.from_pretrained(path), AutoTokenizer.from_pretrained(path),
            CLIPImageProcessor.from_pretrained(path))


def test_prune_in_memory_matches_the_cli(tiny_clip_dir, shapes_pairs_jsonl, tmp_path):
    """A CLIPModel pruned through the API gets the same masks as `mfdeploy prune` on the same checkpoint."""
    model, tok, proc = hf_parts(tiny_clip_dir)
    result = mfdeploy.prune(model, ratio=0.5, method="wanda", calib=shapes_pairs_jsonl, calib_samples=8,
                            batch_size=4, tokenizer=tok, processor=proc)
    run_prune(PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method="wanda", calib=str(shapes_pairs_jsonl),
                          calib_samples=8, batch_size=4, show_progress=False), tmp_path / "p")
    cli_masks = load_file(tmp_path / "p" / "masks.safetensors")
    assert set(cli_masks) == set(result.masks)
    assert all(torch.equal(cli_masks[k], result.masks[k]) for k in cli_masks)
    # in place: the model's weights are the masked ones
    weight = model.vision_model.encoder.layers[0].mlp.fc1.weight
    assert torch.equal(weight != 0, result.masks["vision_model.encoder.layers.0.mlp.fc1.weight"])
    assert result.record["method"] == "wanda" and result.sparsity["overall"] == pytest.approx(0.5, abs=1e-3)


def test_prune_from_pairs_and_batches(tiny_clip_dir):
    """(image, caption) pairs and prepared batches calibrate the same way."""
    from PIL import Image

    from mfdeploy.data import world

    model, tok, proc = hf_parts(tiny_clip_dir)
    scenes = [world.make_scene(s) for s in world.split_seeds("calib", 6)]
    pairs = [(s.render(), s.caption()) for s in scenes]
    assert isinstance(pairs[0][0], Image.Image)
    first = mfdeploy.prune(copy.deepcopy(model), ratio=0.5, method="multiflow", calib=pairs, tokenizer=tok,
                           processor=proc)
    enc = tok([c for _, c in pairs], padding=True, return_tensors="pt")
    batch = {"pixel_values": proc(images=[im for im, _ in pairs], return_tensors="pt")["pixel_values"],
             "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    second = mfdeploy.prune(model, ratio=0.5, method="multiflow", calib=[batch])
    assert all(torch.equal(first.masks[k], second.masks[k]) for k in first.masks)


def test_api_errors_are_one_line(tiny_clip_dir):
    model, _, _ = hf_parts(tiny_clip_dir)
    with pytest.raises(UserError, match="tokenizer= and processor="):
        mfdeploy.prune(model, ratio=0.5, method="wanda", calib=[(None, "a caption")])
    with pytest.raises(UserError, match="CLIPModel"):
        mfdeploy.prune(torch.nn.Linear(2, 2), ratio=0.5, method="magnitude")
    with pytest.raises(UserError, match="ratio"):
        mfdeploy.prune(model, ratio=1.5, method="magnitude")
    with pytest.raises(TypeError, match=r"^prune\(\) got an unexpected keyword argument 'no_such_option'$"):
        mfdeploy.prune(model, ratio=0.5, method="magnitude", no_such_option=1)


def test_export_and_evaluate_in_memory(tiny_clip_dir, tmp_path):
    model, tok, proc = hf_parts(tiny_clip_dir)
    mfdeploy.prune(model, ratio=0.5, method="magnitude")
    manifest = mfdeploy.export(model, tmp_path / "onnx", tokenizer=tok, processor=proc)
    assert manifest["parity"]["vision"]["min_cosine"] >= 0.999
    assert (tmp_path / "onnx" / "text.onnx").is_file()
    adapter = mfdeploy.load(tiny_clip_dir)
    prune_model(adapter, PruneConfig(ratio=0.5, method="magnitude", show_progress=False))
    via_api = mfdeploy.evaluate(model, "shapes", tokenizer=tok, processor=proc)
    via_adapter = mfdeploy.evaluate(adapter, "shapes")
    assert via_api["tasks"] == via_adapter["tasks"] and via_api["retrieval"] == via_adapter["retrieval"]


def test_prune_and_export_are_plain_functions_and_the_old_packages_are_gone():
    """`mfdeploy.prune`/`export` are the API's functions, however much of the stages' packages is loaded; the
    packages live at `mfdeploy.pruning`/`mfdeploy.exporting`, and nothing is left at the old paths."""
    import importlib
    import importlib.util
    import inspect
    import sys
    import types

    import mfdeploy.exporting.spec  # noqa: F401  (a loaded subpackage binds only its own name on `mfdeploy`)
    import mfdeploy.pruning.run  # noqa: F401
    from mfdeploy import api

    for name, package, module in (("prune", "pruning", "masks"), ("export", "exporting", "spec")):
        function = getattr(mfdeploy, name)
        assert callable(function) and inspect.isfunction(function) and function is getattr(api, name)
        assert function.__module__ == "mfdeploy.api"
        assert importlib.util.find_spec(f"mfdeploy.{package}.{module}") is not None
        # a module left at the old path (stale bytecode, an empty folder) would be found here
        with pytest.raises(ModuleNotFoundError, match=f"No module named 'mfdeploy.{name}'"):
            importlib.util.find_spec(f"mfdeploy.{name}.{module}")
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"mfdeploy.{name}")
        assert not (Path(mfdeploy.__file__).parent / name).exists()
    # no module object is patched into something else
    ours = {m: mod for m, mod in sys.modules.items() if m == "mfdeploy" or m.startswith("mfdeploy.")}
    assert len(ours) > 10 and all(type(mod) is types.ModuleType for mod in ours.values())
    assert mfdeploy.pruning.PruneConfig is PruneConfig
