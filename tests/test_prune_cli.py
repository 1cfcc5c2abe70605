"""`mfdeploy prune` end to end and its bad inputs: one clear line, non-zero exit, no output left behind."""

import json

import pytest

from mfdeploy.cli import main
from mfdeploy.models import load


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    return e.value.code, err


def test_prune_writes_outputs(tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "p"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--calib", "shapes", "--calib-samples", "16",
          "--batch-size", "8", "--out", str(out)])
    assert {p.name for p in out.iterdir()} == {"masks.safetensors", "pruned", "prune.json", "sparsity.png",
                                            ".mfdeploy-files"}
    record = json.loads((out / "prune.json").read_text())
    assert record["method"] == "multiflow" and record["calibration"]["samples"] == 16
    assert abs(record["sparsity"]["overall"] - 0.5) < 0.005
    assert set(record["sparsity"]["per_modality"]) == {"vision", "text"}
    assert {"calibration_s", "scoring_s", "total_s"} <= set(record["timings"])
    # the folded checkpoint loads with transformers and with mfdeploy (directly or via the prune dir)
    from transformers import CLIPModel

    CLIPModel.from_pretrained(out / "pruned")
    adapter = load(out)
    assert adapter.model_id == str(tiny_clip_dir)
    w = adapter.model.get_parameter("vision_model.encoder.layers.0.mlp.fc1.weight")
    assert 0.2 < float((w == 0).float().mean()) < 0.8


def test_prune_calib_jsonl(tiny_clip_dir, shapes_pairs_jsonl, tmp_path):
    out = tmp_path / "p"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "wanda", "--pattern", "2:4",
          "--calib", str(shapes_pairs_jsonl), "--calib-samples", "12", "--out", str(out)])
    record = json.loads((out / "prune.json").read_text())
    assert record["pattern"] == "2:4" and record["calibration"]["source"] == str(shapes_pairs_jsonl)
    adapter = load(out)
    for name, layer in adapter.prunable_layers().items():
        g = (layer.module.weight != 0).reshape(layer.module.weight.shape[0], -1, 4)
        assert int(g.sum(-1).max()) <= 2, name


@pytest.mark.parametrize("args,message", [
    (["--ratio", "0"], "strictly between 0 and 1"),
    (["--ratio", "1.5"], "strictly between 0 and 1"),
    (["--ratio", "0.6", "--pattern", "2:4"], "cannot hold"),
    (["--ratio", "0.5", "--method", "obs"], "unknown method"),
    (["--ratio", "0.5", "--method", "mope", "--pattern", "2:4"], "unstructured sparsity only"),
    (["--ratio", "0.5", "--budget", "layer"], "--budget layer: choose one of"),
])
def test_prune_bad_args(tiny_clip_dir, tmp_path, capsys, args, message):
    out = tmp_path / "p"
    code, err = run(["prune", "--model", str(tiny_clip_dir), "--calib", "shapes", "--out", str(out), *args], capsys)
    assert code != 0 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,message", [
    ("", "no image-caption pairs"),
    ('{"image": "a.png"}\n', ":1: missing or empty 'caption'"),
    ("not json\n", ":1: invalid JSON"),
    ('{"image": "missing.png", "caption": "x"}\n', "does not exist"),
])
def test_prune_broken_calibration(tiny_clip_dir, tmp_path, capsys, content, message):
    (tmp_path / "a.png").write_bytes(b"")
    calib = tmp_path / "calib.jsonl"
    calib.write_text(content)
    out = tmp_path / "p"
    code, err = run(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--calib", str(calib),
                     "--out", str(out)], capsys)
    assert code != 0 and message in err and str(calib) in err
    assert not out.exists()


def test_prune_unreadable_image(tiny_clip_dir, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"not an image")
    calib = tmp_path / "calib.jsonl"
    calib.write_text('{"image": "a.png", "caption": "a red circle."}\n')
    out = tmp_path / "p"
    code, err = run(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--calib", str(calib),
                     "--out", str(out)], capsys)
    assert code != 0 and "cannot read image" in err and "a.png" in err
    assert not out.exists()


def test_prune_requires_calib_for_other_models(tiny_clip_dir, tmp_path, capsys):
    code, err = run(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--out", str(tmp_path / "p")], capsys)
    assert code != 0 and "--calib is required" in err
    # magnitude needs no calibration
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude", "--budget", "global",
          "--out", str(tmp_path / "m")])
    assert (tmp_path / "m" / "masks.safetensors").is_file()


def test_prune_existing_out(tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    code, err = run(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude",
                     "--out", str(out)], capsys)
    assert code != 0 and "--force" in err


def test_interrupted_prune_leaves_nothing(tiny_clip_dir, tmp_path, monkeypatch):
    import mfdeploy.pipelines.prune as run_mod

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "save_masks", boom)
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude",
              "--out", str(tmp_path / "p")])
    assert e.value.code != 0
    assert list(tmp_path.iterdir()) == []

