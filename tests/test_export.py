"""ONNX export of the tiny CLIP: graph shape, parity with PyTorch, the `mfdeploy export` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import export_with_cli

from mfdeploy.cli import main
from mfdeploy.errors import UserError
from mfdeploy.exporting import check_parity, export_towers, inspect_graph, model_limits, onnx_io
from mfdeploy.exporting.onnx_export import example_inputs


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # Tiny matrices: thread hand-offs cost more than they save, badly so on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_clip_dir) -> Path:
    """The tiny model exported once through the CLI (export + parity + export.json)."""
    return export_with_cli(tmp_path_factory, tiny_clip_dir, "export")


@pytest.fixture(scope="module")
def adapter(tiny_clip_dir):
    from mfdeploy.models import load

    return load(tiny_clip_dir)


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err.strip()


def test_export_writes_towers_and_manifest(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"vision.onnx", "text.onnx", "export.json", "parity_inputs.npz"} <= names
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    manifest = json.loads((exported / "export.json").read_text())
    assert manifest["opset"] == 17
    for name in ("vision.onnx", "text.onnx", "parity_inputs.npz"):
        rec = manifest["files"][name]
        assert rec["bytes"] == (exported / name).stat().st_size and len(rec["sha256"]) == 64
    for tower in ("vision", "text"):
        assert manifest["parity"][tower]["min_cosine"] >= 0.9999
        assert manifest["parity"][tower]["passed"]
    assert manifest["model"]["max_text_len"] == 48


def test_attention_is_exported_eager_without_the_nan_guard(exported, adapter, tmp_path):
    """sdpa's export puts IsNaN + Where after every softmax; the eager export has none, gives the same
    embeddings (the parity gate above), and leaves the model's own attention setting as it was."""
    assert json.loads((exported / "export.json").read_text())["attention"] == "eager"
    ops = inspect_graph(exported / "text.onnx")["ops"]
    assert "IsNaN" not in ops and ops.get("Softmax") == 2  # one per layer, 2 layers
    assert adapter.model.config._attn_implementation == "sdpa"  # transformers' default: the switch happens
    assert export_towers(adapter, tmp_path / "again")["attention"] == "eager"
    assert adapter.model.config._attn_implementation == "sdpa"
    assert adapter.model.text_model.config._attn_implementation == "sdpa"


def test_io_names_dtypes_and_dynamic_axes(exported):
    vision, text = onnx_io(exported / "vision.onnx"), onnx_io(exported / "text.onnx")
    assert vision["inputs"] == {"pixel_values": {"dtype": "float32", "shape": ["batch", 3, 32, 32]}}
    assert vision["outputs"] == {"image_embeds": {"dtype": "float32", "shape": ["batch", 16]}}
    assert text["inputs"] == {"input_ids": {"dtype": "int64", "shape": ["batch", "text_len"]},
                              "attention_mask": {"dtype": "int64", "shape": ["batch", "text_len"]}}
    assert text["outputs"] == {"text_embeds": {"dtype": "float32", "shape": ["batch", 16]}}
    assert vision["opset"] == text["opset"] == 17
    assert model_limits(exported)["max_text_len"] == 48
    onnx.checker.check_model(str(exported / "text.onnx"), full_check=True)


def test_layernorm_is_one_op(exported):
    # 2 layers: pre-LN + 2 per layer + post-LN (vision), 2 per layer + final LN (text)
    for tower, expected in (("vision", 6), ("text", 5)):
        ops = inspect_graph(exported / f"{tower}.onnx")["ops"]
        assert ops.get("LayerNormalization") == expected
        assert not {"ReduceMean", "Pow", "Sqrt"} & set(ops), f"{tower}: decomposed LayerNorm {ops}"


def test_text_pooling_has_no_int64_argmax(exported):
    text = inspect_graph(exported / "text.onnx")["argmax"]
    assert text and all(a["input_dtype"] == "int32" for a in text)
    assert inspect_graph(exported / "vision.onnx")["argmax"] == []


def test_parity_runs_other_batch_sizes_and_lengths(exported, adapter):
    parity = json.loads((exported / "export.json").read_text())["parity"]
    examples = example_inputs(adapter)
    ex_batch, ex_len = examples["text"]["input_ids"].shape
    text_shapes = {tuple(r["shape"]) for r in parity["text"]["runs"]}
    vision_batches = {r["shape"][0] for r in parity["vision"]["runs"]}
    assert {b for b, _ in text_shapes} - {ex_batch} and {n for _, n in text_shapes} - {ex_len}
    assert (3, 48) in text_shapes  # padded to the model's maximum
    assert vision_batches - {2} and 16 in vision_batches
    assert len(parity["text"]["runs"]) == 1 + 16 + 1  # all, each alone, max padding


def test_ort_matches_torch_at_unseen_shapes(exported, adapter):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported / "text.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = adapter.tokenize(["a red circle.", "a photo of a large cyan star at the bottom right.",
                                  "a blue square.", "there is a small white cross.", "a photo of an object."])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        ref = adapter.text_tower()(ids, mask).numpy()
    assert got.shape == (5, 16)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    vsess = ort.InferenceSession(str(exported / "vision.onnx"), providers=["CPUExecutionProvider"])
    pv = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        np.testing.assert_allclose(vsess.run(None, {"pixel_values": pv.numpy()})[0],
                                   adapter.vision_tower()(pv).numpy(), atol=1e-5)


def test_parity_failure_is_a_user_error(exported, tiny_clip_dir):
    from mfdeploy.models import load

    other = load(tiny_clip_dir)
    with torch.no_grad():
        other.model.text_model.encoder.layers[0].mlp.fc1.weight.mul_(-3.0)  # no longer what was exported
    with pytest.raises(UserError, match="does not match PyTorch.*text min cosine"):
        check_parity(other, exported, n=4)


def test_opset_16_rejected_by_library(adapter, tmp_path):
    with pytest.raises(UserError, match="opset 16 is too old"):
        export_towers(adapter, tmp_path / "x", opset=16)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("case", ["missing model", "existing out", "opset 16", "not a checkpoint"])
def test_cli_bad_inputs(case, tmp_path, tiny_clip_dir, capsys):
    out = tmp_path / "out"
    model = str(tiny_clip_dir)
    extra: list[str] = []
    if case == "missing model":
        model = str(tmp_path / "nope")
    elif case == "existing out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "opset 16":
        extra = ["--opset", "16"]
    else:
        (tmp_path / "empty").mkdir()
        model = str(tmp_path / "empty")
    code, err = _run_cli(["export", model, "--out", str(out), *extra], capsys)
    assert code == 2
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    expected = {"missing model": "does not exist", "existing out": "--force", "opset 16": "opset 16",
                "not a checkpoint": "no config.json"}[case]
    assert expected in err
    if case == "existing out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_failed_parity_leaves_nothing(tmp_path, tiny_clip_dir, capsys, monkeypatch):
    import mfdeploy.exporting as export_pkg

    def failing(*args, **kwargs):
        raise UserError("ONNX export does not match PyTorch (forced by the test)")

    monkeypatch.setattr(export_pkg, "check_parity", failing)
    code, err = _run_cli(["export", str(tiny_clip_dir), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "does not match" in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temporary directory


def test_cli_force_replaces(tmp_path, tiny_clip_dir, monkeypatch):
    import mfdeploy.exporting as export_pkg

    monkeypatch.setattr(export_pkg, "check_parity", lambda *a, **k: {"vision": {"min_cosine": 1.0},
                                                                  "text": {"min_cosine": 1.0}})
    out = tmp_path / "out"
    main(["export", str(tiny_clip_dir), "--out", str(out)])
    (out / "vision.onnx").write_bytes(b"stale")  # a file of the earlier export: it is mfdeploy's to replace
    main(["export", str(tiny_clip_dir), "--out", str(out), "--force"])
    assert (out / "vision.onnx").read_bytes() != b"stale"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_external_data_export(adapter, tmp_path):
    record = export_towers(adapter, tmp_path, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.onnx", "text.onnx.data", "vision.onnx",
                                                          "vision.onnx.data"]
    assert all(t["external_data"] for t in record["towers"].values())
    assert (tmp_path / "text.onnx").stat().st_size < (tmp_path / "text.onnx.data").stat().st_size
    parity = check_parity(adapter, tmp_path, n=2)
    assert parity["vision"]["passed"] and parity["text"]["passed"]
    assert onnx_io(tmp_path / "text.onnx")["metadata"]["max_text_len"] == "48"


@pytest.mark.slow
def test_dynamo_exporter(adapter, tmp_path):
    with pytest.raises(UserError, match="opset 18"):
        export_towers(adapter, tmp_path / "x", opset=17, exporter="dynamo")
    record = export_towers(adapter, tmp_path, opset=18, exporter="dynamo")
    assert record["towers"]["text"]["graph"]["opset"] == 18
    assert onnx_io(tmp_path / "text.onnx")["inputs"]["input_ids"]["shape"] == ["batch", "text_len"]
    assert all(a["input_dtype"] == "int32" for a in record["towers"]["text"]["graph"]["argmax"])
    parity = check_parity(adapter, tmp_path, n=4)
    assert parity["vision"]["passed"] and parity["text"]["passed"]
