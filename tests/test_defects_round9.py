"""Defects of the ninth hunt fixed by the lead (the helpers' are in test_defects_round9_[abcd].py)."""

from __future__ import annotations

import onnx
import pytest
from conftest import export_with_cli
from helpers import colour_pairs, run_cli

from mfdeploy.errors import UserError
from mfdeploy.exporting.spec import TRT_UNSUPPORTED, check_trt_graphs


@pytest.fixture(scope="module")
def ort_int8(tmp_path_factory, tiny_clip_dir):
    """An export and its ONNX Runtime INT8 towers (static QDQ vision, dynamic MatMulInteger text)."""
    exported = export_with_cli(tmp_path_factory, tiny_clip_dir, "r9export")
    out = exported.parent / "q"
    assert run_cli(["quantize", str(exported), "--out", str(out), "--calib", "shapes", "--calib-samples", "8"]) == 0
    return exported, out


def test_engine_refuses_onnx_runtime_int8_towers_in_one_line(ort_int8, capsys):
    """`mfdeploy engine Q` on a `quantize --target ort` output printed trtexec commands for towers TensorRT cannot
    parse (onnx-tensorrt has no importer for MatMulInteger or DynamicQuantizeLinear, and takes QuantizeLinear only
    with int8 zero points of 0, where ONNX Runtime's static scheme has uint8 ones). It now says so before any work."""
    exported, q = ort_int8
    ops = {tower: {n.op_type for n in onnx.load(str(q / f"{tower}.onnx")).graph.node} for tower in ("vision", "text")}
    assert ops["text"] & TRT_UNSUPPORTED  # what the refusal is about is really in the graphs
    capsys.readouterr()
    assert run_cli(["engine", str(q), "--out", str(q.parent / "eng")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ONNX Runtime INT8 towers, which TensorRT cannot build" in err[0]
    assert "--target trt" in err[0] and not (q.parent / "eng").exists()
    # the static QDQ vision tower alone is refused for its uint8 zero points
    with pytest.raises(UserError, match="uint8 zero points"):
        check_trt_graphs({"vision": q / "vision.onnx"}, int8=True)
    check_trt_graphs({"vision": exported / "vision.onnx", "text": exported / "text.onnx"}, int8=False)  # fp32: fine
    with pytest.raises(UserError, match="--int8: .* holds no QuantizeLinear"):
        check_trt_graphs({"vision": exported / "vision.onnx"}, int8=True)


def test_a_depth_share_too_small_to_remove_a_layer_says_so(tmp_path, tiny_clip_dir, caplog, capsys):
    """MoPE `--depth-share 0.3` on 2-layer towers (0.3 x 0.5 x 2 = 0.3 layers, rounded to 0) removed no layer and
    said nothing: the whole ratio came from width, not what the option asked. (And prune's summary, written to a
    pipe, was broken at 80 columns: one line now.)"""
    import json

    out = tmp_path / "p"
    assert run_cli(["prune", "--model", str(tiny_clip_dir), "--method", "mope", "--ratio", "0.5", "--depth-share",
                    "0.3", "--calib", "shapes", "--calib-samples", "8", "--out", str(out)]) == 0
    warned = [r.getMessage() for r in caplog.records if "removes no layer" in r.getMessage()]
    assert len(warned) == 2 and "--depth-share 0.3 removes no layer of the vision tower" in warned[0]
    structure = json.loads((out / "prune.json").read_text())["structure"]
    assert all(len(t["kept_layers"]) == 2 for t in structure.values()), structure  # indeed none removed
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pruned ")]
    assert len(summary) == 1 and summary[0].endswith(f"-> {out}") and len(summary[0]) > 80


def test_eval_takes_serves_names_for_the_onnx_runtime_backends(tiny_build, capsys):
    """`mfdeploy eval BUILD --backend ort-cpu` (the name serve, bench and tune use) was refused as unknown; it is
    eval's `onnx`, the same run, and the result says so. A name that is neither is still refused in one line."""
    import json

    assert run_cli(["eval", str(tiny_build), "--backend", "ort-cpu", "--json", str(tiny_build.parent / "e.json")]) == 0
    result = json.loads((tiny_build.parent / "e.json").read_text())
    assert result["backend"] == "onnx" and result["precision"]
    capsys.readouterr()
    assert run_cli(["eval", str(tiny_build), "--backend", "ort-gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown backend" in err[0] and "ort-cpu = onnx" in err[0]


def test_tune_out_inside_a_build_is_refused_before_any_work(tiny_build, capsys):
    """`tune --out BUILD/tune` put a tune's files inside a build, which `build --force` then refused as files
    mfdeploy did not write (Triton's --out already refused this)."""
    out = tiny_build / "tune"
    assert run_cli(["tune", "--out", str(out)]) == 2  # the bundled model
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"inside {tiny_build.resolve()}, an output of mfdeploy (build.json)" in err[0]
    assert not out.exists()


def test_a_tune_with_relative_paths_resumes_and_picks_from_another_folder(tmp_path, tiny_clip_dir, monkeypatch):
    """tune_settings.json held --calib and --eval as typed: a resume naming the same files from another folder (or
    by their absolute paths) was refused as "different settings", and `--pick` from another folder could not find
    the data. Local paths are now recorded absolute, and a relative one recorded before compares by the file."""
    import json

    import mfdeploy

    work, other = tmp_path / "work", tmp_path / "other"
    data = work / "data"
    colour_pairs(data)
    (work / "space.toml").write_text('methods = ["magnitude"]\nratios = [0.5]\nprecisions = ["fp32"]\n'
                                     'distill_steps = [0]\n')
    other.mkdir()
    monkeypatch.chdir(work)
    common = dict(space="space.toml", max_drop=100, progress=False)
    first = mfdeploy.tune(tiny_clip_dir, out="tune", calib="data/pairs.jsonl", eval_data="data", **common)
    settings = json.loads((work / "tune" / "tune_settings.json").read_text())
    assert (settings["eval"], settings["calib"]) == (str(data), str(data / "pairs.jsonl"))
    # a tune written before: the same settings with the paths as typed, resumed by the absolute paths
    settings.update(eval="data", calib="data/pairs.jsonl")
    (work / "tune" / "tune_settings.json").write_text(json.dumps(settings))
    again = mfdeploy.tune(tiny_clip_dir, out=work / "tune", calib=data / "pairs.jsonl", eval_data=data,
                          **{**common, "space": str(work / "space.toml")})
    assert [t["number"] for t in again.trials] == [t["number"] for t in first.trials] != []
    monkeypatch.chdir(other)  # --pick reads the recorded settings from another folder
    settings.update(eval=str(data), calib=str(data / "pairs.jsonl"))
    (work / "tune" / "tune_settings.json").write_text(json.dumps(settings))
    assert run_cli(["tune", str(work / "tune"), "--pick", "0"]) == 0
    assert (work / "tune" / "best" / "build.json").is_file()
