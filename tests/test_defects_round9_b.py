"""Faults a new user hit (a ninth round, b): the artifacts read by other tools and from other folders."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import make_build, run_cli
from PIL import Image


def test_an_export_of_a_relative_checkpoint_path_is_served_from_any_folder(tiny_clip_dir, tmp_path, monkeypatch):
    """`mfdeploy export b1/pruned --out ex1` recorded `"source": "b1/pruned"`; `mfdeploy serve /abs/ex1` run from
    another folder then said the model "is not in the Hugging Face cache here: download it with huggingface-cli
    download b1/pruned"."""
    from mfdeploy.server.source import _checkpoint

    work = tmp_path / "work"
    shutil.copytree(tiny_clip_dir, work / "ckpt" / "pruned")
    monkeypatch.chdir(work)
    assert run_cli(["export", "ckpt/pruned", "--out", "ex"]) == 0
    source = json.loads((work / "ex" / "export.json").read_text())["model"]["source"]
    assert source == str((work / "ckpt" / "pruned").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Path(_checkpoint(source, work / "ex")) == (work / "ckpt" / "pruned").resolve()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_clip_dir) -> Path:
    out = tmp_path_factory.mktemp("r9b_export") / "onnx"
    assert run_cli(["export", str(tiny_clip_dir), "--out", str(out), "--external-data"]) == 0
    return out


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_a_quantized_exports_manifest_describes_the_quantized_graphs(tiny_export, tmp_path, target):
    """`mfdeploy quantize EXPORT --out DIR` copied the fp32 export's `export.json` into DIR: its `opset` (17) and
    each tower's `graph` (nodes, ops: no QuantizeLinear) described the fp32 files, not DIR's QDQ graphs (opset 19
    from ModelOpt); `external_data`/`data_file` named a `vision.onnx.data` that ModelOpt's single file does not
    have."""
    import onnx

    if target == "trt":
        pytest.importorskip("modelopt.onnx.quantization")
    out = tmp_path / "q"
    scheme = ["--scheme", "static"] if target == "ort" else []
    assert run_cli(["quantize", str(tiny_export), "--out", str(out), "--target", target, *scheme,
                    "--calib", "shapes", "--calib-samples", "8"]) == 0
    record = json.loads((out / "export.json").read_text())
    opsets = []
    for tower in ("vision", "text"):
        model = onnx.load(str(out / f"{tower}.onnx"), load_external_data=False)
        graph = record["towers"][tower]["graph"]
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert graph["nodes"] == len(model.graph.node) and graph["opset"] == opset, (tower, graph["nodes"])
        assert graph["ops"].get("QuantizeLinear", 0) > 0 and graph["ops"].get("DequantizeLinear", 0) > 0
        data = [e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                for e in t.external_data if e.key == "location"]
        data_file = record["towers"][tower]["data_file"]
        assert record["towers"][tower]["external_data"] == bool(data) and (data_file is None) == (not data)
        assert data_file is None or (out / data_file).is_file()
        opsets.append(opset)
    assert record["opset"] == max(opsets)


@pytest.fixture(scope="module")
def served(tiny_clip_dir, tmp_path_factory):
    from test_server import Server

    build = make_build(tmp_path_factory.mktemp("r9b_server") / "build", tiny_clip_dir, onnx_dense=False)
    server = Server(build, tmp_path_factory.mktemp("r9b_server_log") / "serve.log")
    yield server
    assert server.stop() == 0


def test_the_openai_client_gets_a_clear_400_for_token_ids_and_for_images_sent_as_text(served):
    """With the official client: token ids (OpenAI's other input shape, LangChain's default) got "'input[0]' must be
    a non-empty string"; an image data URI without `"modality": "image"` was embedded as the text of its base64
    (200, with the bundled model's tokenizer) or refused as too many tokens, never naming the missing modality."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    for ids in ([1, 2, 3], [[5, 6, 7], [8]]):
        with pytest.raises(openai.BadRequestError, match="'input' holds token ids: send the texts themselves"):
            client.embeddings.create(model="m", input=ids)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    with pytest.raises(openai.BadRequestError, match=r"'input\[1\]' is an image data URI.*\"modality\": \"image\""):
        client.embeddings.create(model="m", input=["a red circle", uri])
    # what the docs show still works: images with the modality, texts in both encodings (the client asks base64)
    image = client.embeddings.create(model="m", input=[uri], extra_body={"modality": "image"})
    assert abs(np.linalg.norm(image.data[0].embedding) - 1) < 1e-4
    default = client.embeddings.create(model="m", input=["a red circle"])
    floats = client.embeddings.create(model="m", input=["a red circle"], encoding_format="float")
    assert np.allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-6)
    assert served.post("/v1/embeddings", {"input": ["ok", 3]}).json()["error"]["message"] == \
        "'input[1]' must be a non-empty string"  # a mixed list is still named item by item


def test_a_null_modality_is_the_default_text_as_every_other_null_field(served):
    """`"modality": null` (clients that send every field, unset ones as null) got 400 "unknown modality None",
    while a null `encoding_format`, `truncate`, `dimensions` or `template` is the default."""
    plain = served.post("/v1/embeddings", {"input": ["a red circle"]})
    null = served.post("/v1/embeddings", {"input": ["a red circle"], "modality": None, "encoding_format": None,
                                          "dimensions": None, "truncate": None})
    assert plain.status_code == null.status_code == 200, null.text
    assert null.json()["data"][0]["embedding"] == plain.json()["data"][0]["embedding"]
