"""Faults a new user hit (an eighth round): an offline machine and hub ids, edited manifests, the server's edges."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from conftest import save_tiny_clip
from helpers import one_error, run_cli

# a closed local port stands in for the hub: refused at once, online or not
UNREACHABLE = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}


def _in_hub_cache(cache: Path, repo: str, checkpoint: Path) -> None:
    """Lay `checkpoint`'s files out as huggingface_hub caches a download of `repo`."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(checkpoint, root / "snapshots" / commit)


def _mfdeploy(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    clean = {k: v for k, v in os.environ.items() if k not in proxies}
    return subprocess.run([sys.executable, "-c", "from mfdeploy.cli.app import main; main()", *args],
                          env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_hub_id_on_a_machine_without_the_hub_loads_from_the_cache_or_fails_at_once(tmp_path):
    """`mfdeploy eval owner/name` offline spent ~30 s in huggingface_hub's retries, printing a dozen lines, before
    transformers' message; a model in the local cache went through the same retries."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    env = {**UNREACHABLE, "HF_HUB_CACHE": str(cache)}
    t0 = time.perf_counter()
    missing = _mfdeploy(["info", "someone/not-cached"], env, tmp_path)
    took = time.perf_counter() - t0
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr
    assert lines[0].startswith(f"error: someone/not-cached: no such model here: no folder of that name, and the "
                               f"local Hugging Face cache ({cache}) does not hold it (its config); nor can the hub be "
                               "reached (127.0.0.1:9: "), lines[0]
    assert "hf download someone/not-cached" in lines[0]
    assert took < 25, took  # no retries: one refused connection (the import of torch is most of it)

    _in_hub_cache(cache, "someone/tiny-clip", save_tiny_clip(tmp_path / "tiny"))
    cached = _mfdeploy(["eval", "someone/tiny-clip", "--json", str(tmp_path / "e.json")], env, tmp_path)
    assert cached.returncode == 0, cached.stderr
    assert "Retrying" not in cached.stderr and (tmp_path / "e.json").is_file()


def test_the_server_tokenizes_and_counts_tokens_from_several_threads_without_mixing_settings():
    """Request threads counted tokens (no padding, no truncation) while the model thread tokenized a batch
    (padded, truncated) on the same fast tokenizer, which keeps those settings between calls: about one run in
    three of 16 concurrent clients got a 500 for a ragged batch ("setting an array element with a sequence")."""
    from mfdeploy.server.preprocess import Preprocessor
    from mfdeploy.zoo import BUNDLED

    pre = Preprocessor(BUNDLED["mfdeploy/clip-shapes"])
    long, texts = "a red circle " * 30, ["a red circle", "a", "a blue square left"]
    want_ids, want_mask = pre.texts([*texts, long])
    want_counts = pre.token_counts([long, "a"])
    seen: list[str] = []

    def count() -> None:
        for _ in range(300):
            if pre.token_counts([long, "a"]) != want_counts:
                seen.append("counts")

    def tokenize() -> None:
        for _ in range(300):
            try:
                ids, mask = pre.texts([*texts, long])
                if not (np.array_equal(ids, want_ids) and np.array_equal(mask, want_mask)):
                    seen.append("ids")
            except ValueError as e:
                seen.append(str(e))

    threads = [threading.Thread(target=f) for f in (count, tokenize, count, tokenize)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert want_ids.shape[1] == pre.max_text_len and not seen, seen[:3]


def test_the_resized_size_is_read_from_either_form_of_an_image_processors_size():
    """transformers keeps `size` as a dict in older versions and as a SizeDict (attributes) in newer ones."""
    from types import SimpleNamespace

    from mfdeploy.models.processors import resized_pixels

    for size in ({"shortest_edge": 224}, SimpleNamespace(shortest_edge=224, height=None, width=None)):
        processor = SimpleNamespace(size=size, do_resize=True)
        assert resized_pixels(processor, 30_000, 1) == 224 * 224 * 30_000  # the shorter side grows to 224
        assert resized_pixels(processor, 640, 480) == 224 * 298
        assert resized_pixels(processor, 10, 10) == 224 * 224
    for size in ({"height": 256, "width": 256}, SimpleNamespace(shortest_edge=None, height=256, width=256)):
        assert resized_pixels(SimpleNamespace(size=size, do_resize=True), 30_000, 1) == 256 * 256
    assert resized_pixels(SimpleNamespace(size={"shortest_edge": 224}, do_resize=False), 30_000, 1) == 30_000


def test_the_python_api_names_arguments_of_the_wrong_type():
    """`evaluate(n_images="8")` ran 8 images, 8.5 ran 8 and True ran 1; `retention=True` on a model with no
    dense reference said nothing; `load(5)` and `export(None, 5)` raised os.fspath's TypeError, naming nothing."""
    import pytest

    import mfdeploy
    from mfdeploy.errors import UserError

    for value, kind in (("8", "str"), (8.5, "float"), (True, "bool")):
        with pytest.raises(UserError, match=rf"^n_images {value!r}: must be a whole number, not {kind}$"):
            mfdeploy.evaluate(None, n_images=value, n_retrieval=8)
    with pytest.raises(UserError, match=r"^n_retrieval 2.0: must be a whole number"):
        mfdeploy.evaluate(None, n_images=8, n_retrieval=2.0)
    with pytest.raises(TypeError, match=r"^source must be a hub id or a path \(str or pathlib.Path\), not int$"):
        mfdeploy.load(5)
    with pytest.raises(TypeError, match=r"^out_dir must be a path \(str or pathlib.Path\), not int$"):
        mfdeploy.export(None, 5)
    result = mfdeploy.evaluate(None, retention=True, n_images=8, n_retrieval=8)
    assert "retention" not in result and result["retention_error"].startswith("retention=True: the model is not")


def test_loading_the_bundled_siglip_prints_no_transformers_warnings():
    """transformers' config repr builds a default SiglipTextConfig whose token ids are outside its own vocabulary:
    two `[transformers] Model config: bos_token_id must be ...` lines on every serve, triton and API call. Run in a
    fresh process: transformers warns once per process."""
    code = ("from mfdeploy.server.preprocess import Preprocessor; from mfdeploy.zoo import BUNDLED; "
            "from mfdeploy.models.processors import load_tokenizer; "
            "Preprocessor(BUNDLED['mfdeploy/siglip-shapes']); load_tokenizer(BUNDLED['mfdeploy/siglip-shapes'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "token_id" not in done.stderr and "[transformers]" not in done.stderr, done.stderr


def test_a_long_thin_image_is_refused_before_the_image_processor_grows_it(tmp_path, capsys):
    """A 30000x2 image in an eval (or calibration) JSONL took 1.7 GB in CLIP's shortest-edge resize."""
    import json

    from PIL import Image

    Image.new("RGB", (30_000, 2), "red").save(tmp_path / "thin.png")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "ok.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n"
                             for i, c in (("ok.png", "a blue square"), ("thin.png", "a red line"))))
    assert run_cli(["eval", "--data", str(pairs)]) == 2
    assert one_error(capsys) == (f"error: {tmp_path / 'thin.png'}: the image is 30000x2; the model's image processor "
                                 "would resize it to 138,240,000 pixels before cropping, over the limit of "
                                 "64,000,000: crop it nearer to a square")
    # and a plain checkpoint's eval says nothing about retention (the CLI asks for it only where it is known)
    assert run_cli(["eval", "--images", "8", "--pairs", "8"]) == 0
    assert "retention" not in capsys.readouterr().err


def test_serve_with_a_backend_this_machine_lacks_fails_before_listening(tiny_build, capsys):
    """`serve BUILD --backend trt` (or torch-cuda, ort-cuda) printed the listen line, a shutdown line and the error
    twice; the message did not name the gpu extra."""
    import pytest

    from mfdeploy.runtime.registry import unavailable_here

    for backend in ("trt", "torch-cuda", "ort-cuda"):
        why = unavailable_here(backend)
        if why is None:
            pytest.skip(f"{backend} runs here")
        assert run_cli(["serve", str(tiny_build), "--backend", backend, "--port", "0"]) == 2
        captured = capsys.readouterr()
        assert captured.err.strip() == f"error: cannot serve {tiny_build} with {backend}: {why}", captured.err
        assert "serving" not in captured.out + captured.err
    assert all("install the gpu extra" in str(unavailable_here(b)) for b in ("trt", "ort-cuda"))


def test_tune_with_a_backend_this_machine_lacks_fails_before_making_its_directory(tmp_path, capsys):
    """`tune --backend torch-cuda` on a CPU said `--device cuda: ...; use --device cpu` (tune has no --device)
    after the dense evaluation, and left a tune directory whose settings then refused the corrected command."""
    import pytest

    from mfdeploy.runtime.registry import unavailable_here

    why = unavailable_here("torch-cuda")
    if why is None:
        pytest.skip("CUDA runs here")
    assert run_cli(["tune", "--backend", "torch-cuda", "--out", str(tmp_path / "t")]) == 2
    assert one_error(capsys) == f"error: --backend torch-cuda: cannot run on this machine: {why}"
    assert not (tmp_path / "t").exists()


def test_a_build_missing_one_tower_gets_one_message_from_every_command(tiny_build, tmp_path, capsys):
    """bench said `missing (export the towers with 'mfdeploy export')` and eval `run the build with export enabled`
    (build has no such option); serve, engine and triton said it was an incomplete build."""
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    (build / "onnx" / "vision.onnx").unlink()
    for argv in (["bench", str(build), "--backends", "ort-cpu"], ["serve", str(build), "--port", "0"],
                 ["eval", str(build), "--backend", "onnx", "--images", "8", "--pairs", "8"]):
        assert run_cli(argv) == 2
        line = one_error(capsys)
        want = f"error: {build}: no onnx/vision.onnx (an incomplete build: rerun `mfdeploy build`"
        assert line.startswith(want), line


def test_an_existing_file_as_out_or_as_a_source_directory_is_named_as_a_file(tmp_path, capsys):
    """`prune --out FILE` suggested --force, which was then refused ('it is a file'); `quantize FILE` said 'no such
    directory'."""
    afile = tmp_path / "report.md"
    afile.write_text("x")
    assert run_cli(["prune", "--ratio", "0.5", "--method", "magnitude", "--out", str(afile)]) == 2
    assert one_error(capsys) == f"error: {afile} exists and is a file, not a directory: choose another --out"
    assert run_cli(["quantize", str(afile), "--out", str(tmp_path / "q")]) == 2
    assert one_error(capsys) == f"error: {afile}: not a directory (expected an ONNX export or build directory)"
    assert afile.read_text() == "x" and not (tmp_path / "q").exists()


def test_bench_errors_start_with_error_and_tune_names_an_unwritable_out(tmp_path, capsys):
    """bench's transient progress bar ended with an empty line on a non-terminal stderr, before `error:`; `tune
    --out /proc/t` said `/proc/t: No such file or directory`, without the `cannot write` every other --out says."""
    assert run_cli(["bench", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: not a build directory") and err.count("\n") == 1, repr(err)
    if Path("/proc/self").is_dir():
        assert run_cli(["tune", "--out", "/proc/mfdeploy-tune"]) == 2
        assert one_error(capsys).startswith("error: cannot write /proc/mfdeploy-tune: ")


def test_an_empty_out_is_named_as_the_current_directory(tmp_path, monkeypatch, capsys):
    """`--out ''` (Path reads it as ".") said ". already exists: pass --force", and --force was then refused."""
    monkeypatch.chdir(tmp_path)
    assert run_cli(["prune", "--ratio", "0.5", "--method", "magnitude", "--out", ""]) == 2
    assert one_error(capsys) == ("error: --out .: the current directory or one of its parents; name a new folder "
                                 "for the output")
    assert list(tmp_path.iterdir()) == []


def test_python_calibration_batches_are_checked_counted_and_batched_as_asked(tiny_clip_dir):
    """pairs were cut into batches of 32 whatever batch_size said (16 pairs could not distil); in-memory batches
    ignored calib_samples and the record said batch_size 32; batches of the wrong shape or ids failed deep in
    transformers; an infinite pixel gave NaN scores and masks in column order, silently."""
    import pytest
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    import mfdeploy
    from mfdeploy.data import world
    from mfdeploy.errors import UserError

    def model() -> CLIPModel:
        return CLIPModel.from_pretrained(tiny_clip_dir).eval()

    tok, proc = AutoTokenizer.from_pretrained(tiny_clip_dir), AutoImageProcessor.from_pretrained(tiny_clip_dir)
    pairs = [(world.render(world.make_scene(s)), world.make_scene(s).caption()) for s in range(16)]
    record = mfdeploy.prune(model(), method="multiflow", calib=pairs, tokenizer=tok, processor=proc,
                            calib_samples=16, batch_size=8, distill_steps=2).record
    assert record["calibration"]["batch_size"] == 8 and record["distill"]["steps_run"] == 2, record["distill"]
    size, longest = 32, 48  # the tiny model's image size and text length

    def batch(px: int = size, length: int = 8, ids: int | None = None) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"pixel_values": torch.randn(4, 3, px, px, generator=g),
                "input_ids": torch.full((4, length), ids) if ids is not None else torch.randint(0, 20, (4, length),
                                                                                                generator=g),
                "attention_mask": torch.ones(4, length, dtype=torch.long)}

    record = mfdeploy.prune(model(), method="wanda", calib=[batch() for _ in range(3)], calib_samples=5).record
    assert {k: record["calibration"][k] for k in ("samples", "batch_size")} == {"samples": 5, "batch_size": 4}
    for bad, message in (([batch(px=36)], f"pixel_values is [4, 3, 36, 36]; the model takes [B, 3, {size}, {size}]"),
                         ([batch(length=56)], f"input_ids has 56 tokens; the model takes at most {longest}"),
                         ([batch(ids=10**6)], "input_ids holds ids outside the vocabulary (0..46): 1000000..1000000")):
        with pytest.raises(UserError, match=rf"^calib: batch 0: {re.escape(message)}$"):
            mfdeploy.prune(model(), method="wanda", calib=bad)
    infinite = batch()
    infinite["pixel_values"][0, 0, 0, 0] = float("inf")
    with pytest.raises(UserError, match=r"^calib: batch 1: pixel_values holds NaN or infinite values$"):
        mfdeploy.prune(model(), method="wanda", calib=[batch(), infinite])
    broken = model()  # a weight that overflows: the activations after it are not finite
    with torch.no_grad():
        broken.vision_model.encoder.layers[0].mlp.fc1.weight[0, 0] = float("inf")
    with pytest.raises(UserError, match=r"^the calibration activations entering vision_model\.encoder\.layers\.0\."
                                        r"mlp\.fc2 are not finite"):
        mfdeploy.prune(broken, method="wanda", calib=[batch()])


def test_a_float16_checkpoint_is_pruned_in_the_dtype_asked(tmp_path):
    """A checkpoint saved in float16 loads in float16, and `--dtype float32` (the default) left it there: the
    statistics and scores of a CPU prune ran on half-precision activations."""
    import torch
    from transformers import CLIPModel

    from mfdeploy.pipelines.prune import load_placed
    from mfdeploy.pruning import PruneConfig

    half = save_tiny_clip(tmp_path / "half")
    CLIPModel.from_pretrained(half).half().save_pretrained(half)
    adapter = load_placed(PruneConfig(ratio=0.5, model=str(half), method="magnitude"))
    assert {p.dtype for p in adapter.model.parameters()} == {torch.float32}


def test_a_build_without_its_pruned_checkpoint_is_named_as_incomplete(tiny_build, tmp_path, capsys):
    """eval and quantize said `not a model checkpoint (no config.json)`; bench and triton said it was incomplete."""
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    shutil.rmtree(build / "pruned")
    for argv in (["eval", str(build), "--images", "8", "--pairs", "8"], ["quantize", str(build), "--in-place"]):
        assert run_cli(argv) == 2
        assert one_error(capsys) == (f"error: {build}: no pruned/ checkpoint (an incomplete build directory: rerun "
                                     "`mfdeploy build`)")


def test_a_failed_copy_into_an_output_names_the_output_not_its_temporary_folder(tmp_path):
    """`triton` on a full disk said `BUILD/onnx/vision.onnx -> OUT_PARENT/.t.tmp-XXXX/...: No space left`: a copy's
    error names its source first, and the temporary path it names is gone when the user reads it."""
    import errno

    from mfdeploy.artifacts.writable import as_write_error

    out, tmp = tmp_path / "t", tmp_path / ".t.tmp-abc"
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "b" / "onnx" / "vision.onnx"), None,
                   str(tmp / "clip_vision_onnx" / "1" / "model.onnx"))
    assert str(as_write_error(full, out, tmp)) == (f"cannot write {out / 'clip_vision_onnx' / '1' / 'model.onnx'}: "
                                                   "No space left on device (errno 28)")
    unreadable = OSError(errno.EACCES, "Permission denied", str(tmp_path / "b" / "onnx" / "vision.onnx"))
    assert as_write_error(unreadable, out, tmp) is None  # an input: named by the CLI as it is


def test_sizes_in_powers_of_1024_are_labelled_as_such():
    """report.md and the build's table divided by 1024 and said KB/MB/GB: a 7,068,863-byte tower read '6.7 MB'
    (7.07 MB); tune's size column and --max-size-mb measure in MiB too, now said."""
    from mfdeploy.pipelines.report import _size
    from mfdeploy.tuning.report import MEASURES

    assert [_size(n) for n in (512, 7_068_863, 3 * 2**30)] == ["512 B", "6.7 MiB", "3.0 GiB"]
    assert "size MiB" in MEASURES
