"""`mfdeploy build` end to end on a tiny model, and its failure modes."""

import json

import pytest

from mfdeploy.cli import main


def test_build_tiny(tiny_clip_dir, tmp_path, shapes_pairs_jsonl):
    out = tmp_path / "build"
    main(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "wanda", "--pattern", "2:4",
          "--calib", "shapes", "--calib-samples", "16", "--eval", str(shapes_pairs_jsonl), "--fp16",
          "--out", str(out)])
    manifest = json.loads((out / "build.json").read_text())
    for key in ("model", "method", "ratio", "pattern", "seed", "calibration", "sparsity", "artifacts", "parity",
                "engine", "timings", "versions"):
        assert key in manifest, key
    assert manifest["pattern"] == "2:4" and abs(manifest["sparsity"]["overall"] - 0.5) < 1e-3
    for f in ("onnx/vision.onnx", "onnx/text.onnx", "masks.safetensors", "pruned/model.safetensors", "report.md",
              "sparsity.png"):
        assert f in manifest["artifacts"] and (out / f).is_file()
    assert manifest["engine"]["status"] == "skipped" and manifest["engine"]["reason"]
    assert any("--sparsity=enable" in c for c in manifest["engine"]["trtexec"])  # 2:4 weights: auto -> on
    for tower in ("vision", "text"):
        assert manifest["parity"]["onnx_vs_torch"][tower]["min_cosine"] >= 0.9999
    ev = manifest["evaluation"]
    assert set(ev["retention"]["retrieval"]) == {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}
    report = (out / "report.md").read_text()
    assert "trtexec" in report and "sparsity.png" in report


def test_build_existing_dir_and_failing_stage(tiny_clip_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "build"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit) as e:
        main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--out", str(out)])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err

    import mfdeploy.export as export_mod

    def broken(*a, **k):
        from mfdeploy.errors import MfdeployError

        raise MfdeployError("simulated export failure")

    monkeypatch.setattr(export_mod, "check_parity", broken, raising=False)
    with pytest.raises(SystemExit) as e:
        main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--out", str(out), "--force"])
    assert e.value.code == 2 and "simulated export failure" in capsys.readouterr().err
    # the old directory is untouched and no temporary directory is left behind
    assert (out / "keep.txt").read_text() == "user data" and list(out.iterdir()) == [out / "keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_build_bad_text_len(tiny_clip_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--max-text-len", "500",
              "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and "exceeds" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
