"""Eleventh hunt (b): a new user deploying: export (the Python API's in-memory models), quantize, serve, info."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
from pathlib import Path

import pytest
from helpers import one_error, run_cli
from PIL import Image

import mfdeploy
from mfdeploy.errors import UserError
from mfdeploy.server import ServeConfig


@pytest.fixture(scope="module")
def tiny_export(tiny_clip_dir, tmp_path_factory) -> Path:
    """`mfdeploy export TINY --out onnx` (the fp32 towers and export.json); tests that change it copy it."""
    out = tmp_path_factory.mktemp("r11b-export") / "onnx"
    assert run_cli(["export", str(tiny_clip_dir), "--out", str(out)]) == 0
    return out


def _with_source(export: Path, where: Path, source: str) -> Path:
    """A copy of `export` whose export.json names `source` as the model it came from (and no longer lists files,
    so that the copy passes the integrity check: an older export records none)."""
    shutil.copytree(export, where)
    manifest = json.loads((where / "export.json").read_text())
    manifest["model"]["source"] = source
    manifest.pop("files", None)
    (where / "export.json").write_text(json.dumps(manifest))
    (where / ".mfdeploy-files").unlink(missing_ok=True)
    return where


# ---- the Python API's export of a model held in memory ---------------------------------------------------------------

def test_an_in_memory_model_loaded_from_a_relative_folder_is_recorded_by_its_absolute_path(tiny_clip_dir, tmp_path,
                                                                                          monkeypatch):
    """`CLIPModel.from_pretrained("ckpt")` then `mfdeploy.export(model, "onnx", ...)` recorded `ckpt` as the model:
    `mfdeploy serve /abs/onnx` (and quantize) from any other folder then looked for `ckpt` on the hub ("not in the
    Hugging Face cache here ... huggingface-cli download ckpt"). The CLI had recorded absolute paths since the ninth
    hunt; the API passed on transformers' `_name_or_path` as it was."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from mfdeploy.server.source import _checkpoint

    work = tmp_path / "work"
    shutil.copytree(tiny_clip_dir, work / "ckpt")
    monkeypatch.chdir(work)
    model = CLIPModel.from_pretrained("ckpt")
    manifest = mfdeploy.export(model, "onnx", tokenizer=AutoTokenizer.from_pretrained("ckpt"),
                               processor=AutoImageProcessor.from_pretrained("ckpt"))
    assert manifest["model"]["source"] == str((work / "ckpt").resolve())
    monkeypatch.chdir(tmp_path)
    assert _checkpoint(manifest["model"]["source"], work / "onnx") == (work / "ckpt").resolve()


def test_an_export_of_the_bundled_model_held_in_memory_is_served(tiny_export, tmp_path):
    """`mfdeploy.export(mfdeploy.load().model, ...)` records the bundled model by its name, `mfdeploy/clip-shapes`,
    which `quantize` loads: `serve` took it for a hub id ("not in the Hugging Face cache here: download it with
    `huggingface-cli download mfdeploy/clip-shapes`", a model the hub does not have)."""
    from mfdeploy.server.source import _checkpoint
    from mfdeploy.zoo import BUNDLED

    export = _with_source(tiny_export, tmp_path / "onnx", "mfdeploy/clip-shapes")
    assert _checkpoint("mfdeploy/clip-shapes", export) == BUNDLED["mfdeploy/clip-shapes"]


def test_an_export_of_an_anonymous_in_memory_model_says_what_to_do(tiny_export, tmp_path, capsys):
    """A model made in memory (`CLIPModel(config)`) is recorded as 'in-memory CLIPModel'. `serve` said to run
    `huggingface-cli download in-memory CLIPModel`, and `quantize` 'in-memory CLIPModel: no such file or directory
    (a Hugging Face model id has the form owner/name ...)'. Both now say why no tokenizer can be found, and how to
    make an export that has one."""
    export = _with_source(tiny_export, tmp_path / "onnx", "in-memory CLIPModel")
    expected = (f"error: {export / 'export.json'}: names the model 'in-memory CLIPModel', neither a folder here nor a "
                "Hugging Face id (owner/name): a model held in memory when it was exported names no checkpoint for "
                "the tokenizer and image processor; save it with both (save_pretrained) and export that folder")
    assert run_cli(["serve", str(export), "--port", "0"]) == 2
    assert one_error(capsys) == expected
    assert run_cli(["quantize", str(export), "--out", str(tmp_path / "q"), "--scheme", "dynamic"]) == 2
    assert one_error(capsys) == expected
    assert not (tmp_path / "q").exists()


# ---- serve: a quantize output asked for with an INT8 backend -------------------------------------------------------

@pytest.mark.parametrize(("target", "backend", "expected"), [
    ("ort", "ort-int8", "{q} holds quantized towers already (`mfdeploy quantize --out`), served as they are: use "
                        "--backend ort-cpu (ort-int8 serves a build's onnx_int8/)"),
    ("ort", "openvino-int8", "{q} holds quantized towers already (`mfdeploy quantize --out`), served as they are: use "
                             "--backend ort-cpu (openvino-int8 serves a build's onnx_int8/)"),
    ("ort", "torch", "{q} is an export directory of quantized ONNX towers; serve it with ort-cpu or ort-cuda"),
    ("trt", "torch", "{q} is an export directory of quantized ONNX towers; serve it with ort-cpu, ort-cuda or trt "
                     "(after `mfdeploy engine {q} --int8`)"),
])
def test_serving_quantized_towers_with_an_int8_backend_points_to_the_backend_that_serves_them(tiny_export, tmp_path,
                                                                                              target, backend,
                                                                                              expected):
    """`mfdeploy quantize EXPORT --out q` then `mfdeploy serve q --backend ort-int8` said that quantized towers are a
    build's onnx_int8/ and to run `mfdeploy build --int8`, of towers that were quantized already; it also offered
    `trt (after mfdeploy engine q)`, which `engine` refuses for ONNX Runtime's INT8 towers."""
    from mfdeploy.server.source import resolve

    q = shutil.copytree(tiny_export, tmp_path / "q")
    (q / "quantize.json").write_text(json.dumps({"target": target, "mode": "int8"}))
    with pytest.raises(UserError) as e:
        resolve(ServeConfig(build_dir=q, backend=backend))
    assert str(e.value) == f"--backend {backend}: " + expected.format(q=q)


def test_an_fp32_export_asked_for_int8_says_how_to_quantize_it(tiny_export):
    from mfdeploy.server.source import resolve

    with pytest.raises(UserError, match=r"\(ort-int8 serves a build's onnx_int8/; INT8 towers of this export: "
                                        r"`mfdeploy quantize .*onnx --out DIR`, then serve DIR with ort-cpu\)$"):
        resolve(ServeConfig(build_dir=tiny_export, backend="ort-int8"))


def test_fp8_towers_on_onnx_runtime_say_they_run_in_f32(tiny_export, tmp_path):
    """`mfdeploy quantize EXPORT --target trt --mode fp8 --out q`, served with ort-cpu: /health said `int8+f32`
    for towers with no integer op: ONNX Runtime's CPU provider dequantizes every fp8 tensor to f32 matmuls."""
    from mfdeploy.runtime.ort_runner import OrtRunner

    q = shutil.copytree(tiny_export, tmp_path / "q")
    (q / "quantize.json").write_text(json.dumps({"target": "trt", "mode": "fp8"}))
    assert OrtRunner(q, threads=1).tower_precision("text") == "f32"
    (q / "quantize.json").write_text(json.dumps({"target": "trt", "mode": "int8"}))
    assert OrtRunner(q, threads=1).tower_precision("text") == "int8+f32"


# ---- serve: images as line-wrapped base64 or URLs, the address, the access log -------------------------------------

def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("wrap", [base64.encodebytes, lambda raw: base64.encodebytes(raw).replace(b"\n", b"\r\n")])
def test_line_wrapped_base64_images_decode(wrap):
    """`base64 photo.png` (76 columns) and Python's `base64.encodebytes` wrap their output in lines: every such image
    was refused as 'not valid base64'."""
    from mfdeploy.server.preprocess import decode_image

    wrapped = wrap(_png()).decode()
    assert "\n" in wrapped
    for value in (wrapped, "data:image/png;base64," + wrapped):
        assert decode_image(value, "input[0]").size == (40, 30)


def test_an_image_url_is_named_as_one():
    from mfdeploy.server.preprocess import BadInput, decode_image

    with pytest.raises(BadInput, match=r"^input\[0\]: an image URL; the server fetches none: send the image's bytes, "
                                       r"base64-encoded \(a data:image/\.\.\.;base64 URI\)$"):
        decode_image("https://example.com/cat.png", "input[0]")
    with pytest.raises(BadInput, match=r"^input\[0\]: not valid base64$"):  # not base64 at all, as before
        decode_image("!!!", "input[0]")


def test_an_empty_host_is_refused_in_one_line():
    """`serve --host ''` warned about the missing API key, then ended in 'cannot listen on :8080: Name or service not
    known'."""
    with pytest.raises(UserError, match=r"^--host '': give the address to listen on"):
        ServeConfig(build_dir=Path("b"), host="").validate()


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_no_api_key_warning_before_an_address_that_cannot_be_bound(tiny_export, capsys):
    """`serve --host 999.1.1.1` warned that anyone reaching the port could use the model, then failed to bind."""
    lines = _Lines()
    logger = logging.getLogger("mfdeploy.server")
    logger.addHandler(lines)
    try:
        assert run_cli(["serve", str(tiny_export), "--host", "999.1.1.1", "--port", "0"]) == 2
    finally:
        logger.removeHandler(lines)
    assert one_error(capsys).startswith("error: cannot listen on 999.1.1.1:0")
    assert not [line for line in lines.lines if "API key" in line]


def test_a_path_cannot_forge_an_access_log_line(tiny_clip_dir, tmp_path):
    """ASGI hands the app the path percent-decoded: `GET /x%0A2099-01-01 ... POST /v1/embeddings 200` wrote a
    second, forged line into the server's log. The path is logged percent-encoded again, as uvicorn's access log
    has it."""
    from test_server_access import FakeRunner, FakeState, client

    lines = _Lines()
    logger = logging.getLogger("mfdeploy.server")
    logger.addHandler(lines)
    c = client(FakeState(ServeConfig(build_dir=tmp_path).validate(), tiny_clip_dir, FakeRunner()))
    try:
        assert c.get("/x%0A2099-01-01 00:00:00,000 INFO POST /v1/embeddings 200 1.0 ms").status_code == 404
        assert c.post("/v1/embeddings", json={"input": "a red circle"}).status_code == 200
    finally:
        c.__exit__(None, None, None)
        logger.removeHandler(lines)
    logged = [line for line in lines.lines if line.startswith(("GET /x", "POST /v1/embeddings"))]
    assert logged[0].startswith("GET /x%0A2099-01-01%2000:00:00,000%20INFO%20POST%20/v1/embeddings%20200") \
        and "\n" not in logged[0]
    assert logged[1].startswith("POST /v1/embeddings 200 ")  # a route's path is logged as it always was


# ---- info ---------------------------------------------------------------------------------------------------------

def test_info_writes_each_line_whole_into_a_pipe(capsys):
    """`mfdeploy info mfdeploy/siglip-shapes > info.txt` broke its family line at 80 columns ('pairs scored by' /
    'sigmoid)'), as prune's summary was before the ninth hunt."""
    assert run_cli(["info", "mfdeploy/siglip-shapes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "family: siglip (SigLIP / SigLIP 2 at a fixed resolution; pairs scored by sigmoid)" in lines


def test_the_listen_line_writes_an_ipv6_address_as_a_url_does(tiny_export, monkeypatch, capsys):
    """`serve --host ::1` printed `serving ... on http://::1:8080`, which no client takes as a URL."""
    import mfdeploy.server

    def fake_serve(cfg, on_listen=None):
        on_listen(cfg.host, 8080)
        return False

    monkeypatch.setattr(mfdeploy.server, "serve", fake_serve)
    for host, url in (("::1", "http://[::1]:8080"), ("127.0.0.1", "http://127.0.0.1:8080")):
        assert run_cli(["serve", str(tiny_export), "--host", host]) == 0
        assert f" on {url} (max batch" in capsys.readouterr().err


def test_outputs_and_sources_under_a_tilde_go_home(tiny_clip_dir, tiny_export, tmp_path, monkeypatch, capsys):
    """`mfdeploy.export(model, "~/exports/b32")` and `mfdeploy quantize EXPORT --out=~/q` (no shell expands a ~ after
    `=`) ended in "~: parent directory does not exist", where `load("~/ckpt")`, `serve ~/b` and `triton --out ~/r`
    take the home folder; `quantize ~/export` said "no such directory"."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    shutil.copytree(tiny_export, home / "onnx")
    manifest = mfdeploy.export(tiny_clip_dir, "~/exported")
    assert (home / "exported" / "export.json").is_file() and manifest["model"]["source"] == str(tiny_clip_dir)
    assert run_cli(["quantize", "~/onnx", "--out=~/q", "--scheme", "dynamic"]) == 0
    assert (home / "q" / "quantize.json").is_file() and not (tmp_path / "~").exists()
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {home / 'q'}"  # where it went, home expanded
