"""`mfdeploy quantize BUILD --in-place`: onnx_int8/ made again, gated, recorded; the build replaced whole."""

import json
import os
import shutil

import pytest

from mfdeploy.artifacts.io import sha256
from mfdeploy.cli import main
from mfdeploy.models.integrity import verify_artifacts
from mfdeploy.runtime.openvino_runner import dynamic_int8

TOWERS = ("vision.onnx", "text.onnx")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def _hashes(root):
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def plain_build(tiny_clip_dir, shapes_pairs_jsonl, tmp_path_factory):
    """A build without --int8, evaluated on a JSONL file."""
    out = tmp_path_factory.mktemp("inplace") / "build"
    main(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude", "--calib", "shapes",
          "--calib-samples", "16", "--eval", str(shapes_pairs_jsonl), "--out", str(out)])
    return out


def test_in_place_adds_then_requantizes_onnx_int8(plain_build, tmp_path, capsys):
    build = tmp_path / "build"
    shutil.copytree(plain_build, build, symlinks=True)
    before = _hashes(build)
    assert "onnx_int8/vision.onnx" not in before
    # a build made without --int8 gets its onnx_int8/ (ONNX Runtime's faster mix: dynamic text)
    main(["quantize", str(build), "--in-place", "--calib", "shapes", "--calib-samples", "16"])
    assert f"\nwrote {build}/onnx_int8 (build.json" in capsys.readouterr().out  # it had none: not "rewrote"
    first = json.loads((build / "build.json").read_text())
    assert {t: r["scheme"] for t, r in first["quantize"]["onnx_int8"]["towers"].items()} == \
        {"vision": "static", "text": "dynamic"}
    assert "onnx_qdq" not in first["quantize"]  # TensorRT's QDQ towers are not made here
    assert dynamic_int8(build / "onnx_int8" / "text.onnx")
    # then again with --scheme static: the towers OpenVINO runs in INT8
    onnx_vision = os.stat(build / "onnx" / "vision.onnx").st_ino
    main(["quantize", str(build), "--in-place", "--scheme", "static", "--calib", "shapes", "--calib-samples", "16"])
    manifest = json.loads((build / "build.json").read_text())
    q = manifest["quantize"]["onnx_int8"]
    assert {t: r["scheme"] for t, r in q["towers"].items()} == {"vision": "static", "text": "static"}
    assert not any(dynamic_int8(build / "onnx_int8" / f) for f in TOWERS)
    for tower in ("vision", "text"):  # both gates of `build --int8`, recorded where the build records them
        assert q["towers"][tower]["min_cosine"] >= 0.99 and q["vs_torch"][tower]["passed"]
        assert manifest["parity"]["int8_vs_torch"]["onnx_int8"][tower]["min_cosine"] >= 0.99
    assert [r["scheme"] for r in manifest["requantized"]] == ["auto", "static"]
    # the INT8 rows are measured again on the data the build evaluated on; the others are the build's own
    ev = manifest["evaluation"]
    assert set(ev["int8"]["retrieval"]) == set(ev["pruned"]["retrieval"]) and ev["retention_int8"]["retrieval"]
    assert ev["pruned"] == first["evaluation"]["pruned"] and ev["dense"] == first["evaluation"]["dense"]
    # every other file is the build's own (hard-linked, not rewritten); the sha256 map covers the new towers
    after = _hashes(build)
    for rel, digest in before.items():
        if rel not in ("build.json", "report.md", ".mfdeploy-files"):
            assert after[rel] == digest, rel
    assert os.stat(build / "onnx" / "vision.onnx").st_ino == onnx_vision
    assert set(verify_artifacts(build, ("",))) >= {"onnx_int8/vision.onnx", "onnx_int8/text.onnx", "pruned/config.json"}
    assert "onnx_int8 (ort, int8)" in (build / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]  # no temporary folder left beside it
    # mfdeploy triton checks build.json's hashes of the towers it copies: the new ones pass
    main(["triton", str(build), "--out", str(tmp_path / "repo")])
    assert (tmp_path / "repo").is_dir()


def test_in_place_refusals_leave_the_build_as_it_was(plain_build, tmp_path, capsys, monkeypatch, nonsense_int8):
    """Each refusal in one line; and a quantizer whose towers compute nonsense (`nonsense_int8`, active throughout:
    the refusals quantize nothing) is stopped by the gate with the build byte-identical."""
    build = tmp_path / "build"
    shutil.copytree(plain_build, build, symlinks=True)
    before = _hashes(build)
    export = tmp_path / "export"
    export.mkdir()
    for argv, message in (
        ([str(build), "--in-place", "--out", str(tmp_path / "q")], "leave out --out and --force"),
        ([str(build), "--in-place", "--target", "trt"], "onnx_qdq/ is what the build's TensorRT engines"),
        ([str(export), "--in-place"], "not a build directory"),
        ([str(build)], "--out DIR is required"),
        ([str(build), "--in-place", "--scheme", "fast"], "--scheme fast"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["quantize", *argv])
        assert e.value.code == 2 and message in _one_line(capsys), argv
    (tmp_path / "link").symlink_to(build)
    with pytest.raises(SystemExit):
        main(["quantize", str(tmp_path / "link"), "--in-place"])
    assert "it is a symbolic link; pass the build directory it points to" in _one_line(capsys)
    (tmp_path / "link").unlink()
    monkeypatch.chdir(build / "onnx")
    with pytest.raises(SystemExit):
        main(["quantize", "..", "--in-place"])
    assert "current directory or one of its parents" in _one_line(capsys)
    monkeypatch.chdir(tmp_path)
    (build / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["quantize", str(build), "--in-place"])
    assert "holds files mfdeploy did not write (notes.txt)" in _one_line(capsys)
    (build / "notes.txt").unlink()
    damaged = build / "onnx_dense" / "vision.onnx"  # read by nothing --in-place runs, but recorded again by it
    kept = damaged.read_bytes()
    damaged.write_bytes(kept + b" ")
    with pytest.raises(SystemExit):
        main(["quantize", str(build), "--in-place"])
    assert f"{damaged}: does not match the sha256 in" in _one_line(capsys)
    damaged.write_bytes(kept)

    with pytest.raises(SystemExit) as e:
        main(["quantize", str(build), "--in-place", "--calib", "shapes", "--calib-samples", "8"])
    assert e.value.code == 2 and "does not match the fp32 towers" in _one_line(capsys)
    assert _hashes(build) == before and sorted(p.name for p in tmp_path.iterdir()) == ["build", "export"]
