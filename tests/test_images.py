"""The one image decoder (issue 31, items 1 and 2): every Pillow mode to the right RGB picture, sizes bounded.

Each image is built with Pillow in the test and compared with the picture it should be (its 8-bit
equivalent within one level, or hand-computed pixels); the eval, calibration and API paths are checked to
decode the same way.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from mfdeploy.data.images import DEFAULT_MAX_PIXELS, FORMATS, ImageError, ImageTooLarge, load_rgb, open_checked, to_rgb

REPO = Path(__file__).resolve().parents[1]
GRADIENT = np.tile(np.arange(256, dtype=np.uint8), (16, 1))  # [16, 256]: every 8-bit level


def saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int64)


def gray(levels: np.ndarray) -> np.ndarray:
    return np.repeat(levels[..., None].astype(np.int64), 3, axis=-1)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header says `width x height` and whose pixel data is missing: only a size check passes it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------- every mode, decoded right

@pytest.mark.parametrize("fmt,mode", [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I;16B")])
def test_16_bit_gray_equals_its_8_bit_picture(fmt, mode):
    wide = Image.fromarray(GRADIENT.astype(np.uint16) * 257)  # 8-bit level v is 16-bit v * 257
    if mode != "I;16":
        wide = Image.frombytes(mode, wide.size, (GRADIENT.astype(np.uint16) * 257).astype(">u2").tobytes())
    raw = saved(wide, fmt)
    with Image.open(io.BytesIO(raw)) as probe:
        assert probe.mode.startswith("I;16"), probe.mode  # the file really is 16-bit
    got = pixels(load_rgb(raw))
    assert np.abs(got - gray(GRADIENT)).max() <= 1  # not white: Pillow's convert("RGB") clips it to 255


def test_16_bit_pgm_read_as_mode_i_is_scaled_by_16_bits():
    body = (GRADIENT.astype(np.uint16) * 257).astype(">u2").tobytes()
    raw = b"P5\n256 16\n65535\n" + body
    with Image.open(io.BytesIO(raw)) as probe:
        assert probe.mode == "I"
    assert np.abs(pixels(load_rgb(raw)) - gray(GRADIENT)).max() <= 1


def test_32_bit_integer_beyond_16_bits_is_scaled_by_its_largest_value():
    values = GRADIENT.astype(np.int32) * 1_000_000  # 0 .. 255e6
    got = pixels(load_rgb(saved(Image.fromarray(values), "TIFF")))
    assert np.abs(got - gray(GRADIENT)).max() <= 1


@pytest.mark.parametrize("scale", [1 / 255, 1000 / 255])
def test_float_images(scale):
    values = GRADIENT.astype(np.float32) * scale  # 0..1 (times 255), or 0..1000 (by its largest value)
    got = pixels(load_rgb(saved(Image.fromarray(values), "TIFF")))
    assert np.abs(got - gray(GRADIENT)).max() <= 1


def test_float_with_nan_is_refused_in_one_line():
    values = np.ones((4, 4), np.float32)
    values[1, 1] = np.nan
    with pytest.raises(ImageError, match=r"^x\.tif: a float \(mode F\) image with NaN or infinite pixels$"):
        load_rgb(saved(Image.fromarray(values), "TIFF"), "x.tif")


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (200, 0, 0, 0))  # fully transparent red: shows white, not red
    rgba.putpixel((1, 0), (0, 0, 100, 128))  # half-transparent dark blue over white
    got = pixels(load_rgb(saved(rgba, "PNG")))
    a = 128 / 255
    want = np.array([[[255, 255, 255], [round(255 * (1 - a)), round(255 * (1 - a)), round(100 * a + 255 * (1 - a))]]])
    assert np.abs(got - want).max() <= 1
    la = Image.new("LA", (1, 1), (0, 0))  # transparent black
    assert pixels(load_rgb(saved(la, "PNG"))).tolist() == [[[255, 255, 255]]]


def test_palette_with_a_transparent_index():
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    raw = saved(pal, "PNG", transparency=0)  # index 0 (black) is transparent
    got = pixels(load_rgb(raw))
    assert got.tolist() == [[[255, 255, 255], [10, 200, 30]]]


def test_cmyk_and_one_bit():
    cmyk = Image.new("CMYK", (2, 1), (255, 0, 0, 0))  # pure cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # black ink
    assert pixels(load_rgb(saved(cmyk, "JPEG", quality=100))).tolist()[0][0][1] >= 250
    assert np.abs(pixels(load_rgb(saved(cmyk, "TIFF"))) - np.array([[[0, 255, 255], [0, 0, 0]]])).max() == 0
    bits = Image.fromarray(np.array([[0, 255, 0, 255]], np.uint8)).convert("1")
    assert pixels(load_rgb(saved(bits, "PNG")))[0, :, 0].tolist() == [0, 255, 0, 255]


def test_exif_rotated_jpeg_stands_upright():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    got = load_rgb(saved(img, "JPEG", exif=exif, quality=95))
    assert got.size == (20, 40)
    top, bottom = pixels(got)[5, 10], pixels(got)[35, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # red on top, blue below


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_give_their_first_frame(fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    raw = saved(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    with Image.open(io.BytesIO(raw)) as probe:
        assert probe.n_frames == 2
        probe.seek(1)
        assert to_rgb(probe).getpixel((4, 4))[0] > 200  # an image left on its second frame still gives the first
    red = pixels(load_rgb(raw))[4, 4]
    assert red[0] > 200 and red[2] < 60


def test_an_unknown_mode_and_a_broken_file_are_refused_in_one_line():
    img = Image.new("L", (2, 2))
    img._mode = "X;99"  # a mode a future Pillow might open: no rule for it
    with pytest.raises(ImageError, match=r"^a\.png: image mode X;99 is not supported"):
        to_rgb(img, "a.png")
    raw = saved(Image.fromarray(GRADIENT), "PNG")
    with pytest.raises(ImageError, match=r"^b\.png: not a decodable image \(OSError: .*truncated"):
        load_rgb(raw[:-40], "b.png")
    with pytest.raises(ImageError, match=r"^c: not a decodable image \(UnidentifiedImageError; accepted formats: "
                                         r"PNG, JPEG, .*\)$"):
        load_rgb(b"hello", "c")


# ---------------------------------------------------------------------------- sizes, from the header

def test_size_is_checked_from_the_header_before_decoding():
    raw = header_only_png(9000, 8000)  # 72 MP, and no pixel data: decoding would fail differently
    with pytest.raises(ImageTooLarge, match=r"^big\.png: a 9000x8000 image \(72,000,000 pixels\) is over the limit "
                                            r"of 64,000,000 pixels per image$") as e:
        load_rgb(raw, "big.png")
    assert (e.value.pixels, e.value.limit) == (72_000_000, DEFAULT_MAX_PIXELS)
    with open_checked(raw, "ok", max_pixels=None) as img:  # no limit: opened, header only
        assert img.size == (9000, 8000)
    # over twice Pillow's own limit, Pillow refuses first: still the same one line, with our limit
    with pytest.raises(ImageTooLarge, match=r"an image of 400,000,000 pixels is over the limit of 64,000,000"):
        load_rgb(header_only_png(20000, 20000), "huge.png")


def test_nothing_from_pillow_reaches_stderr(tmp_path):
    """Pillow's DecompressionBombWarning and its warnings on damaged files would print raw: the one line is ours."""
    from mfdeploy.data import world

    (tmp_path / "bomb.png").write_bytes(header_only_png(10000, 10000))  # 100 MP: over Pillow's 89.5 MP warning
    (tmp_path / "cut.tif").write_bytes(saved(world.render(world.make_scene(3)), "TIFF")[:100])  # "Truncated File Read"
    code = ("import sys; from mfdeploy.data.images import load_rgb, ImageError\n"
            f"for name in ('bomb.png', 'cut.tif'):\n"
            f"    try:\n        load_rgb({str(tmp_path)!r} + '/' + name, name)\n"
            "    except ImageError as e:\n        print(e)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines() == ["bomb.png: a 10000x10000 image (100,000,000 pixels) is over the limit of "
                                        "64,000,000 pixels per image",
                                        "cut.tif: not a decodable image (UnidentifiedImageError; accepted formats: "
                                        f"{', '.join(f for f in FORMATS if f in Image.OPEN)})"]


# ---------------------------------------------------------------------------- every path uses it

def _sixteen_bit_and_eight_bit(root: Path) -> tuple[Path, Path]:
    """The same picture as a 16-bit PNG and as an 8-bit PNG (a world scene's gray levels)."""
    from mfdeploy.data import world

    levels = np.asarray(world.render(world.make_scene(7)).convert("L"))
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(levels.astype(np.uint16) * 257).save(root / "wide.png")
    Image.fromarray(levels).save(root / "narrow.png")
    return root / "wide.png", root / "narrow.png"


def test_eval_folder_and_pairs_decode_16_bit_images(tiny_adapter, tmp_path):
    from mfdeploy.eval.datasets import folder_set, pairs_set
    from mfdeploy.eval.prepare import prepare

    for cls in ("a", "b"):
        _sixteen_bit_and_eight_bit(tmp_path / "folder" / cls)
    prepared = prepare(tiny_adapter, folder_set(tmp_path / "folder"))
    names = [p.name for p in prepared.evalset.images]
    wide, narrow = prepared.pixels[names.index("wide.png")], prepared.pixels[names.index("narrow.png")]
    white = tiny_adapter.pixel_values([Image.new("RGB", (96, 96), "white")])[0].numpy()
    assert np.abs(wide - narrow).max() < 0.05 and np.abs(wide - white).max() > 1
    lines = [json.dumps({"image": "wide.png", "caption": "a"}), json.dumps({"image": "narrow.png", "caption": "b"})]
    (tmp_path / "folder" / "a" / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    r = prepare(tiny_adapter, pairs_set(tmp_path / "folder" / "a" / "pairs.jsonl")).retrieval_pixels
    assert np.abs(r[0] - r[1]).max() < 0.05


def test_calibration_and_api_decode_16_bit_images(tiny_adapter, tmp_path):
    from mfdeploy.models.inputs import CalibSource, pair_batches

    wide, narrow = _sixteen_bit_and_eight_bit(tmp_path)
    lines = [json.dumps({"image": p.name, "caption": "a red circle."}) for p in (wide, narrow)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    (batch,) = pair_batches(tiny_adapter, CalibSource("jsonl", tmp_path / "pairs.jsonl"), 2, 2)
    assert np.abs(batch.pixel_values[0] - batch.pixel_values[1]).max() < 0.05
    with Image.open(wide) as img:  # an API user's own PIL image, still 16-bit
        mine = tiny_adapter.pixel_values([img])[0]
    assert np.abs(mine - batch.pixel_values[1]).max() < 0.05


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets filters
def test_eval_refuses_an_oversized_image_in_one_line(tiny_clip_dir, tmp_path, capsys):
    from mfdeploy.cli import main

    for cls in ("a", "b"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "folder" / cls / "small.png")
    (tmp_path / "folder" / "b" / "big.png").write_bytes(header_only_png(10000, 10000))
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tiny_clip_dir), "--data", str(tmp_path / "folder")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(errors) == 1, err
    assert "big.png" in errors[0] and "10000x10000" in errors[0] and "over the limit" in errors[0]


def test_only_raster_formats_are_opened(monkeypatch):
    """An EPS body reached Pillow's EPS plugin, which runs Ghostscript on it (where `gs` is installed): a server
    handed any client's PostScript to it. Only the raster formats' plugins may open an image now."""
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("the EPS plugin ran")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", no_ghostscript)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    with pytest.raises(ImageError, match=r"^input\[0\]: not a decodable image \(UnidentifiedImageError; accepted "
                                         r"formats: PNG, JPEG, "):
        open_checked(eps, "input[0]")
    assert {"PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP", "PPM"} <= set(FORMATS)
