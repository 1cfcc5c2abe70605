"""Loading a damaged or incomplete checkpoint, prune or build directory: one line naming the file, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mfdeploy.artifacts.io import FILE_LIST, sha256
from mfdeploy.cli import main
from mfdeploy.errors import UserError
from mfdeploy.models import load


def run_fails(argv: list[str], capsys) -> str:
    """Run the CLI expecting a user error: exit code 2 and exactly one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def prune_dir(tiny_clip_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("errs") / "p"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude", "--out", str(out)])
    return out


@pytest.fixture()
def prune_copy(prune_dir, tmp_path) -> Path:
    return Path(shutil.copytree(prune_dir, tmp_path / "p"))


def truncate(path: Path, size: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:size])


def flip_byte(path: Path) -> None:
    """Change one byte in the middle: same size, different sha256."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ---- item 1: a truncated pruned/model.safetensors ---------------------------------------------------------------

@pytest.mark.parametrize("size", [100, 20000])  # header cut; tensors cut ("incomplete metadata")
@pytest.mark.parametrize("command", ["export", "eval"])
def test_truncated_weights_plain_checkpoint(tiny_clip_dir, tmp_path, capsys, size, command):
    """No manifest to compare with: safetensors itself says the file is cut, and the file is named."""
    ckpt = Path(shutil.copytree(tiny_clip_dir, tmp_path / "ckpt"))
    truncate(ckpt / "model.safetensors", size)
    out = tmp_path / "out"
    argv = {"export": ["export", str(ckpt), "--out", str(out)],
            "eval": ["eval", str(ckpt), "--images", "8", "--pairs", "8", "--no-retention"]}[command]
    err = run_fails(argv, capsys)
    assert f"{ckpt / 'model.safetensors'}: truncated or corrupt safetensors file" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing half-written


@pytest.mark.parametrize("command", ["export", "eval"])
def test_truncated_weights_prune_dir(prune_copy, tmp_path, capsys, command):
    """In a prune directory the sha256 from prune.json catches it first, naming the file."""
    truncate(prune_copy / "pruned" / "model.safetensors", 20000)
    argv = {"export": ["export", str(prune_copy), "--out", str(tmp_path / "out")],
            "eval": ["eval", str(prune_copy), "--images", "8", "--pairs", "8", "--no-retention"]}[command]
    err = run_fails(argv, capsys)
    assert f"{prune_copy / 'pruned' / 'model.safetensors'}: does not match the sha256" in err
    assert "modified or corrupted after mfdeploy wrote it" in err and "20000 bytes" in err


# ---- item 2: prune.json records hashes; every file load relies on is checked ------------------------------------

def test_prune_json_records_artifacts(prune_dir):
    record = json.loads((prune_dir / "prune.json").read_text())
    arts = record["artifacts"]
    expected = {p.relative_to(prune_dir).as_posix() for p in prune_dir.rglob("*")
                if p.is_file() and p.name not in ("prune.json", FILE_LIST)}
    assert set(arts) == expected
    assert {"masks.safetensors", "pruned/model.safetensors", "pruned/config.json"} <= set(arts)
    for rel, rec in arts.items():
        assert rec == {"sha256": sha256(prune_dir / rel), "bytes": (prune_dir / rel).stat().st_size}


@pytest.mark.parametrize("target", ["masks.safetensors", "pruned/config.json", "pruned/model.safetensors"])
@pytest.mark.parametrize("command", ["info", "export"])
def test_modified_file_of_prune_dir_is_named(prune_copy, tmp_path, capsys, target, command):
    path = prune_copy / target
    if target.endswith(".json"):
        path.write_text(path.read_text() + " ")  # still valid JSON, one byte more
    else:
        flip_byte(path)
    argv = ["info", str(prune_copy)] if command == "info" else ["export", str(prune_copy), "--out",
                                                                 str(tmp_path / "out")]
    err = run_fails(argv, capsys)
    assert f"{path}: does not match the sha256 in {prune_copy / 'prune.json'}" in err
    assert "modified or corrupted after mfdeploy wrote it" in err


def test_missing_recorded_file_and_pruned_subdir(prune_dir, prune_copy, capsys):
    (prune_copy / "masks.safetensors").unlink()
    err = run_fails(["info", str(prune_copy)], capsys)
    assert f"{prune_copy / 'masks.safetensors'}: missing, but prune.json lists it" in err
    # naming the pruned/ checkpoint itself still checks it against its directory's manifest
    shutil.copy(prune_dir / "masks.safetensors", prune_copy / "masks.safetensors")
    flip_byte(prune_copy / "pruned" / "model.safetensors")
    err = run_fails(["info", str(prune_copy / "pruned")], capsys)
    assert "pruned/model.safetensors: does not match the sha256" in err


def test_intact_prune_dir_loads_and_each_file_is_hashed_once(prune_dir, monkeypatch):
    import mfdeploy.models.integrity as integrity

    hashed: list[Path] = []
    real = integrity.sha256
    monkeypatch.setattr(integrity, "sha256", lambda p: hashed.append(Path(p)) or real(p))
    adapter = load(prune_dir)
    recorded = json.loads((prune_dir / "prune.json").read_text())["artifacts"]
    expected = sorted(prune_dir / r for r in recorded if r.startswith("pruned/") or r == "masks.safetensors")
    assert sorted(hashed) == expected and len(hashed) == len(set(hashed))
    assert adapter.origin["method"] == "magnitude"


# ---- items 3 and 4: missing tokenizer / image processor files ----------------------------------------------------

def model_only(tiny_clip_dir: Path, out: Path) -> Path:
    """A checkpoint saved with only `model.save_pretrained`: no tokenizer, no image processor."""
    from transformers import CLIPModel

    CLIPModel.from_pretrained(tiny_clip_dir).save_pretrained(out)
    return out


def test_missing_tokenizer_json_is_named(tiny_clip_dir, tmp_path, capsys):
    ckpt = Path(shutil.copytree(tiny_clip_dir, tmp_path / "tok"))
    (ckpt / "tokenizer.json").unlink()
    for argv in (["export", str(ckpt), "--out", str(tmp_path / "out")],
                 ["eval", str(ckpt), "--images", "8", "--pairs", "8", "--no-retention"]):
        err = run_fails(argv, capsys)
        assert f"{ckpt}: no tokenizer.json" in err and "copy them from the model" in err


def test_missing_processor_is_named(tiny_clip_dir, tmp_path, capsys):
    ckpt = Path(shutil.copytree(tiny_clip_dir, tmp_path / "proc"))
    (ckpt / "preprocessor_config.json").unlink()
    err = run_fails(["export", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    assert f"{ckpt}: no preprocessor_config.json" in err and "copy them from the model" in err


def test_info_on_model_only_checkpoint(tiny_clip_dir, tmp_path, capsys):
    ckpt = model_only(tiny_clip_dir, tmp_path / "bare")
    main(["info", str(ckpt)])
    printed = capsys.readouterr().out
    assert "total parameters: 61,793" in printed and "image size: 32x32" in printed
    assert "pruned:" not in printed
    # the lazily loaded tokenizer still fails with the file named, when something needs it
    adapter = load(ckpt, need_processors=False)
    with pytest.raises(UserError, match="no tokenizer.json"):
        adapter.tokenize(["a red circle"])
    # commands that need the tokenizer say which file is missing
    err = run_fails(["export", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    assert f"{ckpt}: no tokenizer.json" in err
    # with the files copied from the dense model, as the message says, it works
    for f in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(tiny_clip_dir / f, ckpt / f)
    ids, _ = load(ckpt).tokenize(["a red circle"])
    assert ids.shape[0] == 1 and len(set(ids[0].tolist())) > 2  # real tokens, not one id for every word


def test_one_line_keeps_the_cause():
    from mfdeploy.models.processors import one_line

    e = ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a file, \n(2) another")
    assert one_line(e) == "Couldn't instantiate the backend tokenizer from one of: (1) a file, (2) another"
    assert one_line(ValueError("")) == "ValueError"
    assert len(one_line(ValueError("x" * 1000), limit=50)) == 50
