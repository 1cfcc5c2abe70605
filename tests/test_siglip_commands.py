"""SigLIP and SigLIP 2 through every command (issue 26): info, prune (every method, budget, 2:4, distillation),
export, quantize, engine, build, eval, bench, serve, triton and the Python API.

Exported, INT8 and served embeddings are compared with the model's own `get_image_features` /
`get_text_features` (fp32: cosine >= 0.9999; INT8: the quantize gate, 0.99), on shapes-world images and captions.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import needs_no_engines
from google.protobuf import text_format
from helpers import run_cli
from starlette.testclient import TestClient
from test_siglip import features
from transformers import AutoTokenizer, SiglipModel
from tritonclient.grpc import model_config_pb2 as mc

from mfdeploy.cli import main
from mfdeploy.data import world
from mfdeploy.models import load
from mfdeploy.quantize import MIN_COSINE as INT8_MIN_COSINE

CALIB = ["--calib", "shapes", "--calib-samples", "16", "--batch-size", "8"]
SEEDS = range(20_000_000, 20_000_006)  # eval-split scenes: never calibrated on


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def reference(model_dir: Path) -> dict:
    """Real inputs and the model's own embeddings of them (transformers, no mask: how SigLIP was trained)."""
    adapter = load(model_dir)
    assert type(adapter.model) is SiglipModel
    scenes = [world.make_scene(s) for s in SEEDS]
    captions = [sc.caption() for sc in scenes]
    pixels = adapter.pixel_values([sc.render() for sc in scenes])
    ids = AutoTokenizer.from_pretrained(model_dir)(captions, padding="max_length", max_length=adapter.max_text_len,
                                                   truncation=True, return_tensors="pt")["input_ids"]
    img, txt = features(adapter.model, pixels, ids)  # the loaded SiglipModel (a structured one: its cut shapes)
    return {"scenes": scenes, "captions": captions, "pixels": pixels.numpy(), "ids": ids.numpy(),
            "img": img.numpy(), "txt": txt.numpy()}


def onnx_embeddings(folder: Path, ref: dict) -> tuple[np.ndarray, np.ndarray]:
    """Both towers in ONNX Runtime (CPU); the text tower is fed the one input its graph takes."""
    vision = ort.InferenceSession(str(folder / "vision.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(folder / "text.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in text.get_inputs()] == ["input_ids"]
    return vision.run(None, {"pixel_values": ref["pixels"]})[0], text.run(None, {"input_ids": ref["ids"]})[0]


@pytest.fixture(scope="module")
def build(tiny_siglip2_dir, tmp_path_factory) -> Path:
    """`mfdeploy build --int8` of the SigLIP 2 checkpoint (Gemma-style tokenizer, left padding)."""
    out = tmp_path_factory.mktemp("siglip_build") / "build"
    main(["build", "--model", str(tiny_siglip2_dir), "--method", "multiflow", "--ratio", "0.5", *CALIB, "--int8",
          "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def ref2(tiny_siglip2_dir, build) -> dict:
    """The pruned checkpoint's own embeddings (the build's `pruned/`)."""
    return reference(build / "pruned")


def test_info_names_the_family(tiny_siglip_dir, capsys):
    main(["info", str(tiny_siglip_dir)])
    out = capsys.readouterr().out
    assert "family: siglip" in out and "sigmoid" in out and "prunable layers: 24" in out
    assert "padded to exactly 32 tokens, input_ids (no attention mask" in out
    assert "kept dense: vision_model.head, text_model.head" in out


def test_export_contract_and_parity_with_the_models_own_features(tiny_siglip_dir, tmp_path):
    out = tmp_path / "onnx"
    main(["export", str(tiny_siglip_dir), "--out", str(out)])
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["model"]["family"] == "siglip"
    assert manifest["conventions"] == {"family": "siglip", "scoring": "sigmoid", "text_padding": "max_length",
                                       "text_inputs": ["input_ids"], "loss": manifest["conventions"]["loss"]}
    assert manifest["towers"]["text"]["inputs"] == {"input_ids": {"dtype": "int64", "shape": ["batch", 32]}}
    from mfdeploy.exporting import onnx_io

    text = onnx_io(out / "text.onnx")
    assert text["inputs"] == {"input_ids": {"dtype": "int64", "shape": ["batch", 32]}}  # fixed length, no mask
    assert {k: text["metadata"][k] for k in ("family", "scoring", "text_padding", "text_inputs")} == {
        "family": "siglip", "scoring": "sigmoid", "text_padding": "max_length", "text_inputs": "input_ids"}
    ref = reference(tiny_siglip_dir)
    img, txt = onnx_embeddings(out, ref)
    assert cosines(img, ref["img"]).min() >= 0.9999 and cosines(txt, ref["txt"]).min() >= 0.9999


@pytest.mark.parametrize("method,budget", [("multiflow", None), ("magnitude", "global"), ("wanda", "modality"),
                                           ("wanda", "ecoflap"), ("ecoflap", None), ("mope", None)])
def test_every_method_and_budget_prunes_siglip(method, budget, tiny_siglip_dir):
    import mfdeploy

    adapter = load(tiny_siglip_dir)
    kwargs = {"budget": budget} if budget else {}
    result = mfdeploy.prune(adapter, ratio=0.5, method=method, calib="shapes", calib_samples=16, batch_size=8,
                            ecoflap_samples=8, **kwargs)
    record = result.record
    assert record["family"] == "siglip" and record["method"] == method
    assert record["sparsity"]["overall"] == pytest.approx(0.5, abs=0.02)
    assert set(record["budget_by_role"]) == {"vision", "text"}
    assert set(record["budget_by_role"]["vision"]) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    if method == "mope":
        assert record["z"].startswith("pairwise sigmoid loss")  # MoPE's Z is the family's own loss
        layer = adapter.model.vision_model.encoder.layers[0]
        assert layer.mlp.fc1.out_features == 64  # cut, not masked
    heads = dict(load(tiny_siglip_dir).model.named_parameters())
    for name, p in adapter.model.named_parameters():  # the pooling and text heads are never touched
        if ".head." in name:
            assert torch.equal(p, heads[name]), name


def test_prune_2to4_with_distillation_then_export_keeps_the_pattern(tiny_siglip_dir, shapes_pairs_jsonl, tmp_path):
    from mfdeploy.exporting import prunable_sparsity

    assert run_cli(["prune", "--model", str(tiny_siglip_dir), "--method", "wanda", "--ratio", "0.5", "--pattern", "2:4",
                    "--distill-steps", "3", "--calib", str(shapes_pairs_jsonl), "--calib-samples", "12",
                    "--batch-size", "4", "--out", str(tmp_path / "p")]) == 0
    record = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert record["family"] == "siglip" and record["pattern"] == "2:4" and record["distill"]["steps_run"] >= 1
    assert run_cli(["export", str(tmp_path / "p"), "--out", str(tmp_path / "onnx")]) == 0
    report = prunable_sparsity(load(tmp_path / "p"), tmp_path / "onnx")
    assert report["all_sparse"] and not report["unmatched"], report


def test_mope_checkpoint_reloads_and_exports(tiny_siglip_dir, tmp_path):
    assert run_cli(["prune", "--model", str(tiny_siglip_dir), "--method", "mope", "--ratio", "0.5", *CALIB,
                    "--out", str(tmp_path / "p")]) == 0
    adapter = load(tmp_path / "p")
    assert type(adapter.model) is SiglipModel and adapter.model.text_model.encoder.layers[0].mlp.fc1.out_features == 64
    assert run_cli(["export", str(tmp_path / "p"), "--out", str(tmp_path / "onnx")]) == 0
    ref = reference(tmp_path / "p" / "pruned")
    img, txt = onnx_embeddings(tmp_path / "onnx", ref)
    assert cosines(img, ref["img"]).min() >= 0.9999 and cosines(txt, ref["txt"]).min() >= 0.9999


@pytest.mark.slow  # the module's build takes ~30 s
def test_build_records_the_family_and_its_int8_towers_pass_the_gate(build, ref2):
    manifest = json.loads((build / "build.json").read_text())
    assert manifest["family"] == "siglip" and manifest["conventions"]["scoring"] == "sigmoid"
    assert json.loads((build / "prune.json").read_text())["family"] == "siglip"
    img, txt = onnx_embeddings(build / "onnx", ref2)
    assert cosines(img, ref2["img"]).min() >= 0.9999 and cosines(txt, ref2["txt"]).min() >= 0.9999
    q_img, q_txt = onnx_embeddings(build / "onnx_int8", ref2)
    assert cosines(q_img, ref2["img"]).min() >= INT8_MIN_COSINE and cosines(q_txt, ref2["txt"]).min() >= INT8_MIN_COSINE
    quant = json.loads((build / "onnx_int8" / "quantize.json").read_text())
    text = quant["towers"]["text"]
    assert "/text_model/head/MatMul" in text["float_nodes"]  # the text head stays float, as CLIP's projection
    assert not any("/head/" in name for name in text["quantized_nodes"])
    engine = manifest["engine"]
    if engine["status"] != "built":  # no GPU here: the commands to build elsewhere take input_ids alone, fixed
        text_cmd = next(c for c in engine["trtexec"] if "text.onnx" in c)
        assert "--minShapes=input_ids:1x32 " in text_cmd and "attention_mask" not in text_cmd


@pytest.mark.slow  # the module's build takes ~30 s
@needs_no_engines
def test_engine_profiles_fix_the_text_length(fake_trt, build, tmp_path, capsys):
    assert run_cli(["engine", str(build / "onnx"), "--out", str(tmp_path / "e"), "--max-batch", "4"]) == 0
    text_profile = fake_trt["config"][1]["profiles"][0]
    shape = text_profile["input_ids"]
    assert (list(shape.min), list(shape.opt), list(shape.max)) == ([1, 32], [4, 32], [4, 32])
    assert run_cli(["engine", str(build / "onnx"), "--out", str(tmp_path / "f"), "--max-text-len", "16"]) == 2
    assert "reads exactly 32 tokens" in capsys.readouterr().err


@pytest.mark.slow  # the module's build takes ~30 s
def test_eval_and_bench(build, tmp_path, capsys):
    assert run_cli(["eval", str(build), "--backend", "onnx", "--images", "40", "--pairs", "40",
                    "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["tasks"] and result["retrieval"]
    assert run_cli(["bench", str(build), "--backends", "ort-cpu", "--towers", "text", "--batch-sizes", "2",
                    "--iters", "2", "--warmup", "1", "--min-time", "0", "--json", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())
    assert {r["text_len"] for r in rows if "text_len" in r} == {32}  # timed at the length the model reads
    assert run_cli(["bench", str(build), "--backends", "ort-cpu", "--text-len", "8"]) == 2
    assert "reads exactly 32 tokens" in capsys.readouterr().err


@pytest.mark.slow  # the module's build takes ~30 s
def test_served_embeddings_and_sigmoid_classification(build, ref2):
    from mfdeploy.server.app import make_app
    from mfdeploy.server.config import ServeConfig
    from mfdeploy.server.state import ServerState

    with TestClient(make_app(ServerState(ServeConfig(build_dir=build).validate()))) as client:
        while client.get("/health").status_code != 200:  # the towers load in the background
            pass
        texts = client.post("/v1/embeddings", json={"input": ref2["captions"], "truncate": True}).json()
        got = np.array([d["embedding"] for d in texts["data"]], dtype=np.float32)
        assert cosines(got, ref2["txt"]).min() >= 0.9999
        uris = []
        for sc in ref2["scenes"][:2]:
            buf = io.BytesIO()
            sc.render().save(buf, format="PNG")
            uris.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
        images = client.post("/v1/embeddings", json={"input": uris, "modality": "image"}).json()
        got = np.array([d["embedding"] for d in images["data"]], dtype=np.float32)
        assert cosines(got, ref2["img"][:2]).min() >= 0.9999
        labels = ["circle", "square", "triangle"]
        body = client.post("/v1/classify", json={"image": uris[0], "labels": labels,
                                                 "template": "a photo of a {}."}).json()
        # the captions' own tokens, cut at the length, not the padding every position of which is computed
        encoded = AutoTokenizer.from_pretrained(build / "pruned")(ref2["captions"])["input_ids"]
        own = [min(len(ids), 32) for ids in encoded]
        assert texts["usage"]["prompt_tokens"] == sum(own) < 32 * len(ref2["captions"]), texts["usage"]
    assert body["scoring"] == "sigmoid"
    model = SiglipModel.from_pretrained(build / "pruned").eval()
    tok = AutoTokenizer.from_pretrained(build / "pruned")
    ids = tok([f"a photo of a {x}." for x in labels], padding="max_length", max_length=32, truncation=True,
              return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.from_numpy(ref2["pixels"][:1]))
    want = torch.sigmoid(out.logits_per_image[0]).numpy()  # transformers' own SigLIP probabilities
    assert np.allclose(body["scores"], want, atol=1e-4)


@pytest.mark.slow  # the module's build takes ~30 s
def test_triton_repository_takes_input_ids_alone(build, tmp_path):
    repo = tmp_path / "repo"
    assert run_cli(["triton", str(build), "--out", str(repo)]) == 0
    record = json.loads((repo / "triton.json").read_text())
    assert record["family"] == "siglip" and "siglip_text_onnx" in record["models"]
    config = text_format.Parse((repo / "siglip_text_onnx" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert [(t.name, list(t.dims)) for t in config.input] == [("input_ids", [32])]
    readme = (repo / "README.md").read_text()
    assert 'padding="max_length", max_length=32' in readme and '"attention_mask"' not in readme
    assert "dynamic text length" not in readme and "padded to the model's one text length" in readme  # dims [32]
    # the scores need the logit scale and bias, which the graphs do not hold (the README's client applies them)
    model = SiglipModel.from_pretrained(build / "pruned")
    scoring = record["scoring"]
    assert scoring["function"] == "sigmoid" and scoring["logit_bias"] == pytest.approx(model.logit_bias.item())
    assert scoring["logit_scale"] == pytest.approx(model.logit_scale.exp().item())
    assert f"probs = 1 / (1 + np.exp(-({scoring['logit_scale']!r} * cosine + {scoring['logit_bias']!r})))" in readme


def test_python_api_with_an_in_memory_siglip(tiny_siglip_dir, tmp_path):
    """A `SiglipModel` held in memory, calibrated from processor batches that carry no attention mask."""
    from transformers import AutoImageProcessor

    import mfdeploy

    model = SiglipModel.from_pretrained(tiny_siglip_dir).eval()
    tok, proc = AutoTokenizer.from_pretrained(tiny_siglip_dir), AutoImageProcessor.from_pretrained(tiny_siglip_dir)
    scenes = [world.make_scene(s) for s in range(16)]
    batches = []
    for i in range(0, 16, 8):
        enc = tok([sc.caption() for sc in scenes[i:i + 8]], padding="max_length", max_length=32, truncation=True,
                  return_tensors="pt")
        batches.append({"pixel_values": proc(images=[sc.render() for sc in scenes[i:i + 8]],
                                             return_tensors="pt")["pixel_values"], "input_ids": enc["input_ids"]})
    result = mfdeploy.prune(model, ratio=0.5, method="wanda", calib=batches, tokenizer=tok, processor=proc)
    assert result.record["family"] == "siglip" and result.sparsity["overall"] == pytest.approx(0.5, abs=0.01)
    manifest = mfdeploy.export(model, tmp_path / "onnx", tokenizer=tok, processor=proc)
    assert manifest["model"]["family"] == "siglip" and manifest["parity"]["text"]["passed"]
