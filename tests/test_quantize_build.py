"""`build --int8`, `engine --int8` and `eval --backend onnx-int8` on a tiny model."""

import json
from pathlib import Path

import pytest

from mfdeploy.cli import main


def _run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err.strip()


@pytest.mark.slow
def test_build_int8_with_engines_and_eval(fake_trt, tiny_clip_dir, tmp_path, shapes_pairs_jsonl, capsys):  # noqa: F811
    out = tmp_path / "build"
    main(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude", "--pattern", "2:4",
          "--calib", "shapes", "--calib-samples", "16", "--eval", str(shapes_pairs_jsonl), "--int8",
          "--max-batch", "4", "--out", str(out)])
    manifest = json.loads((out / "build.json").read_text())
    for name, target in (("onnx_int8", "ort"), ("onnx_qdq", "trt")):
        q = manifest["quantize"][name]
        assert q["target"] == target and q["passed"]
        for tower in ("vision", "text"):
            assert q["towers"][tower]["min_cosine"] >= 0.99
            assert f"{name}/{tower}.onnx" in manifest["artifacts"]
            # the same parity gate as onnx/ and onnx_dense/: ONNX Runtime against the PyTorch model
            gate = manifest["parity"]["int8_vs_torch"][name][tower]
            assert gate["passed"] and gate["min_cosine"] >= 0.99
        assert json.loads((out / name / "quantize.json").read_text())["target"] == target
    # the INT8 engines come from onnx_qdq/: int8 + fp16, 2:4 sparse kernels asked for
    assert [Path(p).parent.name for p, _ in fake_trt["network"]][:2] == ["onnx_qdq", "onnx_qdq"]
    assert [(c["int8"], c["fp16"], c["sparse_weights"]) for c in fake_trt["config"][:2]] == [(True, True, True)] * 2
    assert manifest["engine"]["status"] == "built" and manifest["engine"]["int8"]
    assert all("--int8" in c for c in manifest["engine"]["trtexec"])
    ev = manifest["evaluation"]
    assert set(ev["int8"]["retrieval"]) == set(ev["pruned"]["retrieval"]) and "retention_int8" in ev
    assert "onnx_int8 (ort, int8)" in (out / "report.md").read_text()
    # eval --backend onnx-int8 reads the build's onnx_int8/ and matches the build's own int8 numbers
    json_path = tmp_path / "eval.json"
    main(["eval", str(out), "--data", str(shapes_pairs_jsonl), "--backend", "onnx-int8", "--no-retention",
          "--json", str(json_path)])
    result = json.loads(json_path.read_text())
    assert result["backend"] == "onnx-int8" and result["retrieval"] == ev["int8"]["retrieval"]
    assert result["precision"] == {"vision": "int8+f32", "text": "int8+f32"}  # what ran, not "f32"


def test_build_int8_gate_failure_leaves_nothing(tiny_clip_dir, tmp_path, capsys, nonsense_int8):
    out = tmp_path / "build"
    code, err = _run_cli(["build", "--model", str(tiny_clip_dir), "--method", "magnitude", "--int8",
                          "--calib", "shapes", "--calib-samples", "8", "--out", str(out)], capsys)
    last = err.splitlines()[-1]
    assert code == 2 and last.startswith("error:") and "does not match the fp32 towers" in last
    assert "Traceback" not in err and not out.exists() and list(tmp_path.iterdir()) == []


def test_engine_int8_commands_and_refusal(tiny_clip_dir, tmp_path, capsys):
    from mfdeploy.exporting import build_engines, engine_status

    src = tmp_path / "onnx"
    main(["export", str(tiny_clip_dir), "--out", str(src)])
    code, err = _run_cli(["engine", str(src), "--int8"], capsys)  # fp32 towers: nothing to build INT8 from
    assert code == 2 and "holds no QuantizeLinear/DequantizeLinear" in err and len(err.splitlines()) == 1
    qdq = tmp_path / "qdq"
    main(["quantize", str(src), "--out", str(qdq), "--target", "trt", "--calib-samples", "8", "--calib", "shapes"])
    if engine_status()["status"] == "available":
        pytest.skip("TensorRT and a GPU are present")
    record = build_engines(qdq, int8=True, max_batch=4, record_file=None)
    assert record["status"] == "skipped" and record["int8"] and record["fp16"]
    assert all(c.startswith(f"trtexec --onnx={t}.onnx --saveEngine={t}.plan --int8 --fp16 ")
               for c, t in zip(record["trtexec"], ("vision", "text")))


def test_fp8_towers_build_fp8_engines_and_qdq_towers_build_quantized_without_int8(tiny_clip_dir, tmp_path,
                                                                                  fake_trt):
    """`quantize --target trt --mode fp8` towers: TensorRT needs its FP8 flag for FP8 Q/DQ layers (`trtexec
    --fp8`); the engine asked for INT8 kernels instead. A Q/DQ directory built without `--int8` asked for none,
    which TensorRT refuses for a graph holding Q/DQ layers: it builds quantized either way."""
    from mfdeploy.exporting import build_engines

    src = tmp_path / "onnx"
    main(["export", str(tiny_clip_dir), "--out", str(src)])
    fp8 = tmp_path / "fp8"
    main(["quantize", str(src), "--out", str(fp8), "--target", "trt", "--mode", "fp8", "--calib-samples", "8",
          "--calib", "shapes"])
    record = build_engines(fp8, int8=True, max_batch=4, record_file=None)
    assert record["status"] == "built" and record["fp8"] and record["fp16"]
    assert [(c["fp8"], c["int8"], c["fp16"]) for c in fake_trt["config"]] == [(True, False, True)] * 2
    assert all(c.startswith(f"trtexec --onnx={t}.onnx --saveEngine={t}.plan --fp8 --fp16 ") and "--int8" not in c
               for c, t in zip(record["trtexec"], ("vision", "text")))
    assert all(e["parity"]["passed"] for e in record["engines"].values())
    fake_trt["config"].clear()
    plain = build_engines(fp8, max_batch=4, out_dir=tmp_path / "plain", record_file=None)  # no --int8
    assert plain["fp8"] and plain["int8"] and [c["fp8"] for c in fake_trt["config"]] == [True, True]
    fake_trt["config"].clear()
    dense = build_engines(src, max_batch=4, out_dir=tmp_path / "dense", record_file=None)  # fp32: nothing turned on
    assert not dense["int8"] and not dense["fp8"] and all(not c["int8"] and not c["fp8"] for c in fake_trt["config"])
    assert not any("--int8" in c or "--fp8" in c for c in dense["trtexec"])
