"""Records tell the truth (issue 13): calibration pairs used, MoPE's options and Z, distillation warnings."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mfdeploy.cli import main
from mfdeploy.models import load
from mfdeploy.pruning.run import PruneConfig, prune_model

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["wanda", "multiflow", "ecoflap", "mope"])
def test_short_calibration_file_records_pairs_used(tiny_clip_dir, shapes_pairs_jsonl, caplog, recording_reporter,
                                                   method):
    """12 pairs in the file, 40 asked: the record says 12 used of 40 requested, and one warning says so."""
    cfg = PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method=method, calib=str(shapes_pairs_jsonl),
                      calib_samples=40, batch_size=8, mope_neuron_group=32 if method == "mope" else 64,
                      show_progress=False)
    with caplog.at_level(logging.WARNING, logger="mfdeploy"):
        record = prune_model(load(tiny_clip_dir), cfg, reporter=recording_reporter)
    cal = record["calibration"]
    assert (cal["samples"], cal["requested"], cal["batch_size"]) == (12, 40, 8)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "holds 12 image-caption pairs, fewer than --calib-samples 40: calibrating on 12" in warnings[0]
    assert "\n" not in warnings[0]
    if method in ("wanda", "multiflow"):  # the statistics pass's bar is sized to what it will see
        assert recording_reporter.tasks["calibration pairs"] == [12, 12]
    if method == "ecoflap":
        assert record["zeroth_order_pairs"] == 12
    if method == "mope":
        assert cal["z_pairs"] == 12 and "distill" not in record


def test_enough_pairs_no_warning(tiny_clip_dir, shapes_pairs_jsonl, caplog):
    cfg = PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method="wanda", calib=str(shapes_pairs_jsonl),
                      calib_samples=10, batch_size=4, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="mfdeploy"):
        record = prune_model(load(tiny_clip_dir), cfg)
    assert (record["calibration"]["samples"], record["calibration"]["requested"]) == (10, 10)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cli_warns_in_one_line_on_stderr(tiny_clip_dir, shapes_pairs_jsonl, tmp_path):
    """The real CLI (own process, logging unconfigured): one warning line on stderr, no traceback."""
    out = tmp_path / "p"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "mfdeploy.cli", "prune", "--model", str(tiny_clip_dir),
                           "--ratio", "0.5", "--method", "wanda", "--calib", str(shapes_pairs_jsonl),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert lines == [f"warning: {shapes_pairs_jsonl} holds 12 image-caption pairs, fewer than --calib-samples 256: "
                     "calibrating on 12"], proc.stderr
    assert "Traceback" not in proc.stderr
    rec = json.loads((out / "prune.json").read_text())
    assert (rec["calibration"]["samples"], rec["calibration"]["requested"]) == (12, 256)
    assert "12/12" in proc.stderr and "/256" not in proc.stderr  # the bar ends full


@pytest.mark.parametrize("flag", ["--include", "--exclude"])
def test_mope_refuses_include_exclude(tiny_clip_dir, tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "mope", "--calib", "shapes",
              flag, "*fc1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--include/--exclude do not apply to --method mope" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("calib,distill", [("jsonl", 2), ("jsonl", 0), ("shapes", 2)])
def test_mope_record_says_where_z_pairs_came_from(tiny_clip_dir, shapes_pairs_jsonl, calib, distill):
    source = str(shapes_pairs_jsonl) if calib == "jsonl" else "shapes"
    cfg = PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method="mope", calib=source, calib_samples=8,
                      batch_size=4, mope_neuron_group=32, distill_steps=distill, show_progress=False)
    record = prune_model(load(tiny_clip_dir), cfg)
    cal = record["calibration"]
    assert record["z_pairs"] == cal["z_pairs"] == cal["samples"] == 8
    assert ("distill" in record) == bool(distill)
    if calib == "jsonl":
        assert record["z_held_out"] is False and "held out" not in record["z"].replace("not held out", "")
        assert f"the first 8 pairs of {shapes_pairs_jsonl}" in record["z"]
        assert ("not held out" in record["z"]) == bool(distill)
        if distill:  # an eighth of the 8 pairs (at least 2) held out of training: the last ones
            d = record["distill"]
            assert (d["train_pairs"], d["held_out_pairs"]) == (6, 2) and "pairs 7-8 of" in d["held_out"]
    else:
        assert record["z_held_out"] is True and "held out" in record["z"]
        if distill:  # training on the first 8 calibration seeds, 64 held out from their own range
            assert (record["distill"]["train_pairs"], record["distill"]["held_out_pairs"]) == (8, 64)


@pytest.fixture()
def torch_warns_always():
    """torch warns about float() of a grad tensor once per process: make it warn every time, for this test."""
    import torch

    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


@pytest.mark.filterwarnings("error")  # a float() of a tensor that requires grad warns: that fails here
def test_distill_raises_no_warning(tiny_clip_dir, torch_warns_always):
    import copy

    import torch

    from mfdeploy.models.inputs import CalibSource, pair_batches
    from mfdeploy.pruning.distill import distill

    adapter = load(tiny_clip_dir)
    teacher = copy.deepcopy(adapter.model)
    with torch.no_grad():
        adapter.model.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(0.5)  # a student that differs
    batches = list(pair_batches(adapter, CalibSource("shapes"), 8, 4))
    for _ in range(2):  # the check can fail: with warn-always, torch warns on every such float()
        with pytest.warns(UserWarning, match="requires_grad"):
            float(torch.ones(1, requires_grad=True).sum())
    result = distill(adapter.model, teacher, batches[:1], batches[1:], steps=3)
    assert isinstance(result["loss_first"], float) and isinstance(result["loss_last"], float)
    assert result["loss_first"] > 0 and result["steps"] == 3


# --- build.json: calibration timing, trtexec folder, dense parity -------------------------------------------------

def _build(args: list[str]) -> None:
    main(["build", "--ratio", "0.5", *args])


def test_build_records_what_happened(tiny_clip_dir, shapes_pairs_jsonl, tmp_path, capsys):
    out = tmp_path / "build"
    _build(["--model", str(tiny_clip_dir), "--method", "wanda", "--calib", str(shapes_pairs_jsonl),
            "--out", str(out)])
    text = (out / "build.json").read_text()
    manifest = json.loads(text)
    assert ".tmp-" not in text  # no path of the temporary folder the build ran in
    # 1. the pairs used and asked for
    cal = manifest["calibration"]
    assert (cal["samples"], cal["requested"]) == (12, 256)
    # 3. calibration.seconds is the statistics pass alone; every prune step is named for what it measures
    prune_json = json.loads((out / "prune.json").read_text())
    assert cal["seconds"] == round(prune_json["timings"]["calibration_s"], 2)
    assert set(manifest["prune_timings"]) == {"calibration_s", "scoring_s"}
    assert manifest["prune_timings"]["scoring_s"] == round(prune_json["timings"]["scoring_s"], 2)
    # 2. the trtexec commands run in the final build folder (onnx/ -> engines/), printed whole, one per line
    eng = manifest["engine"]
    assert eng["status"] == "skipped" and eng["trtexec_cwd"] == str(out)
    assert (Path(eng["trtexec_cwd"]) / "onnx" / "vision.onnx").is_file()
    stdout = capsys.readouterr().out.splitlines()
    assert all(len(c) > 80 for c in eng["trtexec"])  # long enough that a hard wrap at 80 columns would cut them
    for command in eng["trtexec"]:
        assert command in stdout
    assert "Build them where a GPU is present by running:" in stdout and f"cd {out}" in stdout
    report = (out / "report.md").read_text()
    assert "\n".join(["```sh", "mkdir -p engines", *eng["trtexec"], "```"]) in report
    # 4. the dense towers pass the same parity gate as the pruned ones
    for key in ("onnx_vs_torch", "onnx_dense_vs_torch"):
        for tower in ("vision", "text"):
            got = manifest["parity"][key][tower]
            assert got["passed"] and got["min_cosine"] >= 0.9999, (key, tower)
    assert "parity dense vision (ORT vs torch)" in report
    assert "parity_dense_s" in manifest["timings"]


def test_build_fails_when_dense_towers_do_not_match(tiny_clip_dir, tmp_path, capsys, monkeypatch):
    """A dense export that differs from the dense model ends the build in one line, and nothing is left."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    import mfdeploy.exporting as export_mod

    real_export = export_mod.export_towers

    def export_then_spoil_dense(adapter, onnx_dir, **kwargs):
        result = real_export(adapter, onnx_dir, **kwargs)
        if Path(onnx_dir).name == "onnx_dense":  # scale one large weight of the vision graph
            path = Path(onnx_dir) / "vision.onnx"
            model = onnx.load(str(path))
            init = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(3.0), init.name))
            onnx.save(model, str(path))
        return result

    monkeypatch.setattr(export_mod, "export_towers", export_then_spoil_dense)
    out = tmp_path / "build"
    with pytest.raises(SystemExit) as e:
        _build(["--model", str(tiny_clip_dir), "--method", "magnitude", "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2 and len(lines) == 1
    assert "dense towers (onnx_dense/): ONNX export does not match PyTorch" in lines[0] and "vision" in lines[0]
    assert "Traceback" not in err and not out.exists() and list(tmp_path.iterdir()) == []


def test_build_fails_when_an_engine_does_not_match(fake_trt, tiny_clip_dir, tmp_path, capsys,  # noqa: F811
                                                  monkeypatch):
    import mfdeploy.exporting.engine as engine_mod

    monkeypatch.setattr(engine_mod, "compare_with_onnxrt",
                        lambda *a, **k: {"passed": False, "min_cosine": 0.5, "max_abs_err": 1.0})
    out = tmp_path / "build"
    with pytest.raises(SystemExit) as e:
        _build(["--model", str(tiny_clip_dir), "--method", "magnitude", "--max-batch", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "TensorRT engines/ does not match ONNX Runtime" in err
    assert "vision min cosine 0.50000" in err and not out.exists()


# --- sparsity.png ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["multiflow", "mope"])
def test_sparsity_plot_names_layers_and_roles(tiny_clip_dir, tmp_path, method):
    from matplotlib.colors import to_hex
    from matplotlib.patches import Rectangle

    from mfdeploy.pruning.plot import parse_layer_name, plot_sparsity

    cfg = PruneConfig(ratio=0.5, model=str(tiny_clip_dir), method=method, calib="shapes", calib_samples=8,
                      batch_size=8, mope_neuron_group=32 if method == "mope" else 64, show_progress=False)
    record = prune_model(load(tiny_clip_dir), cfg)
    fig = plot_sparsity(record, tmp_path / "sparsity.png")
    assert (tmp_path / "sparsity.png").stat().st_size > 0
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    patches = [h for h in legend.legend_handles if isinstance(h, Rectangle)]
    colours = [to_hex(p.get_facecolor()) for p in patches]
    assert len(set(colours)) == len(colours) == len(patches) > 0  # one distinct colour per legend entry
    roles = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"] if method == "multiflow" else ["whole layer"]
    assert labels == [*roles, "target 0.5"]
    axes = fig.axes
    assert [ax.get_title().split(" ")[0] for ax in axes] == ["vision", "text"]
    for ax in axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["L0", "L1"]  # the tiny model's two layers
        bars = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(bars) == 2 * len(roles)
        # each bar's colour is its role's legend colour, and its height the record's sparsity
        assert {to_hex(b.get_facecolor()) for b in bars} == set(colours)
    per_layer = record["sparsity"]["per_layer"]
    name = next(iter(per_layer))
    layer, role = parse_layer_name(name)
    assert layer == 0 and role == roles[0]
    first_bar = next(p for p in axes[0].patches if isinstance(p, Rectangle))
    assert first_bar.get_height() == pytest.approx(per_layer[name]["sparsity"])
