"""`mfdeploy build` end to end on a tiny model, and its failure modes."""

import json
from pathlib import Path

import pytest

from mfdeploy.cli import main


def test_build_tiny(tiny_clip_dir, tmp_path, shapes_pairs_jsonl, capsys):
    out = tmp_path / "build"
    main(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "wanda", "--pattern", "2:4",
          "--calib", "shapes", "--calib-samples", "16", "--eval", str(shapes_pairs_jsonl), "--fp16",
          "--distill-steps", "2", "--out", str(out)])
    manifest = json.loads((out / "build.json").read_text())
    # recovery (issue 15) is on the build's record; the 2:4 weights it trained pass the engine's check below
    assert manifest["distill"]["steps"] == 2 and manifest["distill"]["masks_held"] is True
    for key in ("model", "method", "ratio", "pattern", "seed", "calibration", "sparsity", "artifacts", "parity",
                "engine", "timings", "versions"):
        assert key in manifest, key
    assert manifest["pattern"] == "2:4" and abs(manifest["sparsity"]["overall"] - 0.5) < 1e-3
    for f in ("onnx/vision.onnx", "onnx/text.onnx", "masks.safetensors", "pruned/model.safetensors", "report.md",
              "sparsity.png"):
        assert f in manifest["artifacts"] and (out / f).is_file()
    assert manifest["engine"]["status"] == "skipped" and manifest["engine"]["reason"]
    assert any("--sparsity=enable" in c for c in manifest["engine"]["trtexec"])  # 2:4 weights: auto -> on
    # polygraphy's 2:4 check on the exported (distilled) weights: every prunable layer of each tower (2 x 6)
    assert all(w["n_sparse"] >= 12 for w in manifest["engine"]["weights_2to4"].values()), manifest["engine"]
    for tower in ("vision", "text"):
        assert manifest["parity"]["onnx_vs_torch"][tower]["min_cosine"] >= 0.9999
    ev = manifest["evaluation"]
    assert set(ev["retention"]["retrieval"]) == {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}
    report = (out / "report.md").read_text()
    assert "trtexec" in report and "sparsity.png" in report
    # progress counts the stages that run here: no "engine dense" without a GPU
    steps = [line.split("] ", 1) for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    names = [name for _, name in steps]
    assert names == ["load", "evaluate dense", "export dense", "parity dense", "prune", "export", "parity", "engine",
                     "evaluate pruned", "report"]
    assert [n for n, _ in steps] == [f"[{i}/10" for i in range(1, 11)]


def test_build_on_a_gpu_also_builds_dense_engines(fake_trt, tiny_clip_dir, tmp_path, capsys):  # noqa: F811
    """With TensorRT present, build makes engines/ (pruned, 2:4 kernels) and engines_dense/ (the bench baseline)."""
    out = tmp_path / "build"
    main(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude", "--pattern", "2:4",
          "--fp16", "--max-batch", "4", "--out", str(out)])
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["engine"]["status"] == "built" and manifest["engine_dense"]["status"] == "built"
    assert manifest["engine"]["sparse_weights"] == {"vision": True, "text": True}
    assert manifest["engine_dense"]["sparse_weights"] == {"vision": False, "text": False}
    # four polygraphy builds: the pruned towers from onnx/, then the dense ones from onnx_dense/, all FP16
    assert [Path(p).parent.name for p, _ in fake_trt["network"]] == ["onnx", "onnx", "onnx_dense", "onnx_dense"]
    assert [c["fp16"] for c in fake_trt["config"]] == [True] * 4
    assert [c["sparse_weights"] for c in fake_trt["config"]] == [True, True, False, False]
    for d in ("engines", "engines_dense"):
        for f in ("vision.plan", "text.plan", "vision.trt.log", "text.trt.log"):
            assert f"{d}/{f}" in manifest["artifacts"], (d, f)
    for tower in ("vision", "text"):
        assert manifest["engine_dense"]["parity"][tower]["passed"]
    assert "dense engines" in (out / "report.md").read_text()
    assert "[8/9] engine dense" in capsys.readouterr().err  # a local model without --eval: no evaluate stages


def test_build_existing_dir_and_failing_stage(tiny_clip_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "build"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit) as e:
        main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--out", str(out)])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err

    import mfdeploy.exporting as export_mod

    def broken(*a, **k):
        from mfdeploy.errors import MfdeployError

        raise MfdeployError("simulated export failure")

    # --force never replaces a directory holding a user's file...
    with pytest.raises(SystemExit) as e:
        main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--out", str(out), "--force"])
    assert e.value.code == 2 and "mfdeploy did not write it" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user data" and list(out.iterdir()) == [out / "keep.txt"]

    # ...and a failing stage leaves an earlier build as it was
    (out / "keep.txt").unlink()
    main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--out", str(out), "--force"])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(export_mod, "check_parity", broken, raising=False)
    with pytest.raises(SystemExit) as e:
        main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--out", str(out), "--force"])
    assert e.value.code == 2 and "simulated export failure" in capsys.readouterr().err
    # the old directory is untouched and no temporary directory is left behind
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_build_bad_text_len(tiny_clip_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--max-text-len", "500",
              "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and "exceeds" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
