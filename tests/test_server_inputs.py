"""What `mfdeploy serve` accepts (issue 31, items 1, 2, 6 and 8): images decoded right and bounded in pixels,
over-long texts refused unless truncation is asked for, JSON bodies only.

One server process with small pixel limits, driven over HTTP (see test_server.py for the harness).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_build
from PIL import Image
from test_images import header_only_png
from test_server import REPO, Server, embeddings

from mfdeploy.data import world

LONG = " ".join(["red"] * 100)  # 102 tokens with BOS and EOS; the tiny model takes 48


def uri(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def build(tiny_clip_dir, tmp_path_factory) -> Path:
    return make_build(tmp_path_factory.mktemp("inputs") / "build", tiny_clip_dir, onnx_dense=False)


@pytest.fixture(scope="module")
def server(build, tmp_path_factory):
    # world pictures are 96x96 = 9,216 pixels: three fit in a request, four do not
    s = Server(build, tmp_path_factory.mktemp("inputs-log") / "serve.log", "--max-items", "8",
               "--max-image-pixels", "20000", "--max-request-pixels", "30000")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def reference(build):
    from mfdeploy.models import load
    from mfdeploy.runtime.ort_runner import OrtRunner

    return load(build / "pruned"), OrtRunner(build / "onnx", threads=1)


def image(server, *images: str) -> np.ndarray:
    return embeddings(server.post("/v1/embeddings", {"input": list(images), "modality": "image"}))


def error(resp, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == status and "\n" not in body["message"]
    return body["message"]


def test_a_16_bit_png_embeds_as_its_8_bit_picture_not_white(server):
    levels = np.asarray(world.render(world.make_scene(31)).convert("L"))
    wide = uri(Image.fromarray(levels.astype(np.uint16) * 257))
    narrow = uri(Image.fromarray(levels))
    white = uri(Image.new("L", levels.shape[::-1], 255))
    got = image(server, wide, narrow, white)
    assert float(got[0] @ got[1]) >= 0.9999
    assert np.abs(got[0] - got[2]).max() > 1e-3  # before: the 16-bit picture came out white


def test_transparent_and_exif_images_match_their_pictures(server):
    scene = world.render(world.make_scene(32))
    rgba = scene.convert("RGBA")
    rgba.putalpha(Image.new("L", scene.size, 128))
    on_white = Image.new("RGB", scene.size, "white")
    on_white.paste(scene, mask=Image.new("L", scene.size, 128))
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down
    buf = io.BytesIO()
    scene.rotate(180).save(buf, format="PNG", exif=exif)
    rotated = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    got = image(server, uri(rgba), uri(on_white))  # two a request: the server allows three pictures this size
    assert float(got[0] @ got[1]) >= 0.9999
    got = image(server, rotated, uri(scene))
    assert float(got[0] @ got[1]) >= 0.9999


def test_pixel_limits_answer_413_from_the_header(server):
    big = "data:image/png;base64," + base64.b64encode(header_only_png(200, 200)).decode()  # no pixel data
    message = error(server.post("/v1/embeddings", {"input": [big], "modality": "image"}), 413)
    assert message == ("input[0]: a 200x200 image (40,000 pixels) is over the limit of 20,000 pixels per image "
                       "(--max-image-pixels)")
    four = [uri(world.render(world.make_scene(s))) for s in range(40, 44)]
    message = error(server.post("/v1/embeddings", {"input": four, "modality": "image"}), 413)
    assert "4 images hold 36,864 pixels, over the limit of 30,000 pixels per request (--max-request-pixels)" in message
    assert image(server, *four[:3]).shape[0] == 3
    message = error(server.post("/v1/classify", {"image": big, "labels": ["a", "b"]}), 413)
    assert message.startswith("image: a 200x200 image")
    # under the limit itself, but CLIP's shortest-edge resize would make it 32 x 608,000 (a 30000 x 1 PNG of a few
    # hundred bytes took 5 s and 2.6 GB of memory on the bundled model's server)
    thin = "data:image/png;base64," + base64.b64encode(header_only_png(19_000, 1)).decode()
    message = error(server.post("/v1/embeddings", {"input": [thin], "modality": "image"}), 413)
    assert message == ("input[0]: the image is 19000x1; the model's image processor would resize it to 19,456,000 "
                       "pixels before cropping, over the limit of 20,000 (--max-image-pixels): send it cropped "
                       "nearer to a square"), message


def test_over_long_text_is_refused_unless_truncation_is_asked_for(server, reference):
    adapter, ort = reference
    message = error(server.post("/v1/embeddings", {"input": ["a red circle.", LONG]}), 400)
    assert message.startswith("'input[1]' is 102 tokens, over this model's limit of 48 tokens")
    assert "\"truncate\": true" in message
    assert error(server.post("/v1/embeddings", {"input": LONG}), 400).startswith("'input' is 102 tokens")
    got = embeddings(server.post("/v1/embeddings", {"input": [LONG], "truncate": True}))
    ids, mask = adapter.tokenize([LONG])  # cut at 48 tokens
    assert ids.shape[1] == 48 and float(got[0] @ ort.embed_texts(ids.numpy(), mask.numpy())[0]) >= 0.999
    assert error(server.post("/v1/embeddings", {"input": "x", "truncate": "yes"}), 400).startswith(
        "'truncate' must be true or false")
    message = error(server.post("/v1/classify", {"image": uri(world.render(world.make_scene(1))),
                                                 "labels": ["circle", LONG]}), 400)
    assert message.startswith("the prompt of 'labels[1]' is 102 tokens")


def test_the_server_wide_truncate_option(build):
    from starlette.testclient import TestClient

    from mfdeploy.server import ServeConfig, ServerState, make_app

    with TestClient(make_app(ServerState(ServeConfig(build_dir=build, truncate=True).validate()))) as client:
        while client.get("/health").status_code != 200:
            pass
        assert embeddings(client.post("/v1/embeddings", json={"input": LONG})).shape[0] == 1
        assert client.post("/v1/embeddings", json={"input": LONG, "truncate": False}).status_code == 400


@pytest.mark.parametrize("content_type,status", [
    ("text/plain", 415), (None, 415), ("application/x-www-form-urlencoded", 415),
    ("application/json", 200), ("application/json; charset=utf-8", 200), ("Application/JSON", 200),
])
def test_only_json_bodies_are_accepted(server, content_type, status):
    headers = {} if content_type is None else {"content-type": content_type}
    classify = json.dumps({"image": uri(Image.new("RGB", (8, 8))), "labels": ["a", "b"]}).encode()
    for path, body in (("/v1/embeddings", b'{"input": "a red circle."}'), ("/v1/classify", classify)):
        resp = server.client.post(path, content=body, headers=headers)
        if status == 200:
            assert resp.status_code == 200, resp.text
        else:
            message = error(resp, 415)
            assert "Content-Type: application/json" in message and (content_type or "no Content-Type") in message


@pytest.mark.parametrize("args,message", [
    (["--max-image-pixels", "0"], "--max-image-pixels 0: must be 1 or more"),
    (["--max-image-pixels", "100", "--max-request-pixels", "50"],
     "--max-request-pixels 50 is below --max-image-pixels 100"),
])
def test_bad_pixel_limits_fail_in_one_line(build, args, message):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "mfdeploy.cli", "serve", str(build), "--port", "0", *args],
                          capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr


def test_cli_defaults_are_the_config_defaults():
    import inspect

    from mfdeploy.cli.serve import serve
    from mfdeploy.server import ServeConfig

    params = inspect.signature(serve).parameters
    config = ServeConfig(build_dir=Path("."))
    for name in ("max_image_pixels", "max_request_pixels", "truncate"):
        assert params[name].default == getattr(config, name), name


def test_the_pixel_budget_bounds_pictures_held_at_once():
    import threading
    import time

    from mfdeploy.server.decoding import PixelBudget

    budget, peak, lock = PixelBudget(100), [0], threading.Lock()

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(p,)) for p in (60, 60, 30, 10, 500, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert peak[0] <= 100 and budget.used == 0  # 500 > the budget: it ran alone, counted as the whole budget


def test_request_images_checks_every_size_first_and_gives_memory_back(monkeypatch):
    from mfdeploy.server import decoding
    from mfdeploy.server.preprocess import TooLarge

    released = []
    monkeypatch.setattr(decoding, "release_freed_memory", lambda: released.append(True))
    budget = decoding.PixelBudget(10**9)
    good = uri(world.render(world.make_scene(5)))
    bad = "data:image/png;base64," + base64.b64encode(header_only_png(5000, 4000)).decode()  # no pixel data
    with pytest.raises(TooLarge, match=r"2 images hold 20,009,216 pixels, over the limit of 20,000,000"):
        decoding.request_images([good, bad], ["input[0]", "input[1]"], 10**8, 20_000_000, lambda p: p, budget)
    assert released == [True]  # a request this large hands freed memory back, refused or not
    shapes = []
    out = decoding.request_images([good], ["input[0]"], 10**8, 10**8,
                                  lambda p: shapes.append(p.size) or np.zeros((3, 2, 2), np.float32), budget)
    assert shapes == [(96, 96)] and out[0].shape == (3, 2, 2) and budget.used == 0 and released == [True]
