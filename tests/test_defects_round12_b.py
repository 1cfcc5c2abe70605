"""Twelfth hunt (b): deploying: `serve --variant` on an export, the advice for a build's quantized --out folder, the
hub probe offline, a read-only command facing an output a killed run had moved aside, and slowloris."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from helpers import one_error, run_cli

from mfdeploy.errors import UserError
from mfdeploy.server import ServeConfig


@pytest.fixture(scope="module")
def exports(tiny_clip_dir, tmp_path_factory) -> dict[str, Path]:
    """`mfdeploy export` of the tiny checkpoint (dense) and of a magnitude 0.5 prune of it (pruned)."""
    root = tmp_path_factory.mktemp("r12b-exports")
    assert run_cli(["prune", "--model", str(tiny_clip_dir), "--method", "magnitude", "--ratio", "0.5",
                    "--calib", "shapes", "--calib-samples", "8", "--out", str(root / "prune")]) == 0
    assert run_cli(["export", str(root / "prune"), "--out", str(root / "pruned")]) == 0
    assert run_cli(["export", str(tiny_clip_dir), "--out", str(root / "dense")]) == 0
    return {"pruned": root / "pruned", "dense": root / "dense", "prune": root / "prune"}


# ---- 1. serve EXPORT --variant --------------------------------------------------------------------------------------

def test_an_export_records_whether_its_model_is_pruned(exports, tiny_clip_dir):
    pruned = json.loads((exports["pruned"] / "export.json").read_text())["pruned"]
    assert {k: pruned[k] for k in ("method", "ratio", "pattern")} == {"method": "magnitude", "ratio": 0.5,
                                                                     "pattern": "unstructured"}
    assert json.loads((exports["dense"] / "export.json").read_text())["pruned"] is False


@pytest.mark.parametrize("older", [False, True], ids=["export.json", "older export: the towers' metadata"])
def test_serve_variant_on_an_export_is_checked_against_the_model_it_holds(exports, tiny_clip_dir, tmp_path, older):
    """`mfdeploy serve EXPORT --variant pruned` was refused whatever the export held ("an export directory, which
    holds one model"): a pruned export is served, and a variant other than the model the export holds is refused
    in one line that says which model it holds and what to do. An export made before export.json recorded it is
    told by the metadata its towers carry."""
    from mfdeploy.server.source import resolve

    ex = dict(exports)
    if older:
        for name in ("pruned", "dense"):
            ex[name] = shutil.copytree(exports[name], tmp_path / name)
            manifest = json.loads((ex[name] / "export.json").read_text())
            del manifest["pruned"]
            (ex[name] / "export.json").write_text(json.dumps(manifest))
    served = resolve(ServeConfig(build_dir=ex["pruned"], variant="pruned").validate())
    assert (served.kind, served.checkpoint) == ("export", (exports["prune"] / "pruned").resolve())
    assert resolve(ServeConfig(build_dir=ex["dense"], variant="dense").validate()).kind == "export"
    with pytest.raises(UserError) as e:
        resolve(ServeConfig(build_dir=ex["dense"], variant="pruned").validate())
    assert str(e.value) == (f"--variant pruned: {ex['dense']} is an export of a dense model; serve it without "
                            "--variant, or export the pruned one (`mfdeploy export PRUNE_OR_BUILD_DIR --out DIR`) "
                            "and serve that")
    with pytest.raises(UserError) as e:
        resolve(ServeConfig(build_dir=ex["pruned"], variant="dense").validate())
    dense = str(tiny_clip_dir.resolve())
    assert str(e.value) == (f"--variant dense: {ex['pruned']} is an export of a pruned model (magnitude 0.5 "
                            f"unstructured from {dense}); serve it without --variant, or export the dense one "
                            f"(`mfdeploy export {dense} --out DIR`) and serve that")


def test_serve_variant_refusal_on_an_export_is_one_line(exports, capsys):
    assert run_cli(["serve", str(exports["dense"]), "--variant", "pruned", "--port", "0"]) == 2
    assert one_error(capsys).startswith(f"error: --variant pruned: {exports['dense']} is an export of a dense model; ")


# ---- 2. serve of `quantize BUILD --out DIR` -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def build_quantized(tiny_build, shapes_pairs_jsonl, tmp_path_factory) -> dict[str, Path]:
    """`mfdeploy quantize BUILD --target ort|trt --out DIR` (a build's towers quantized into a folder of their own)."""
    root = tmp_path_factory.mktemp("r12b-quantized")
    assert run_cli(["quantize", str(tiny_build), "--target", "ort", "--scheme", "dynamic",
                    "--out", str(root / "ort")]) == 0
    assert run_cli(["quantize", str(tiny_build), "--target", "trt", "--calib", str(shapes_pairs_jsonl),
                    "--calib-samples", "8", "--out", str(root / "trt")]) == 0
    return {"ort": root / "ort", "trt": root / "trt"}


@pytest.mark.parametrize("backend", ["ort-cpu", "ort-int8", "trt"])
def test_a_builds_trt_towers_in_an_out_folder_are_not_sent_to_in_place(build_quantized, tiny_build, backend):
    """`mfdeploy quantize BUILD --target trt --out q`, then `serve q`: the advice was `mfdeploy quantize BUILD
    --in-place` and `--backend ort-int8`, which refuses --target trt and serves other towers; with --backend ort-int8
    it said to use ort-cpu, which then refused the folder. The advice now makes towers of the same kind that serve."""
    from mfdeploy.server.source import resolve

    q = build_quantized["trt"]
    with pytest.raises(UserError) as e:
        resolve(ServeConfig(build_dir=q, backend=backend).validate())
    assert str(e.value) == (f"{q}: TensorRT Q/DQ towers of the build {tiny_build.resolve()}, with no export.json "
                            "naming the model whose tokenizer and image processor the server needs: quantize an "
                            f"export of the build instead (`mfdeploy export {tiny_build.resolve()} --out EXPORT`, then "
                            "`mfdeploy quantize EXPORT --target trt --out DIR`) and serve DIR")


@pytest.mark.parametrize("backend", ["ort-cpu", "ort-int8"])
def test_a_builds_ort_towers_in_an_out_folder_are_served_from_the_build(build_quantized, tiny_build, backend):
    from mfdeploy.server.source import resolve

    q = build_quantized["ort"]
    with pytest.raises(UserError) as e:
        resolve(ServeConfig(build_dir=q, backend=backend).validate())
    assert str(e.value) == (f"{q}: ONNX Runtime INT8 towers of the build {tiny_build.resolve()}, with no export.json "
                            "naming the model whose tokenizer and image processor the server needs: serve them from "
                            f"the build (`mfdeploy quantize {tiny_build.resolve()} --in-place --scheme dynamic`, then "
                            f"`mfdeploy serve {tiny_build.resolve()} --backend ort-int8`)")


# ---- 3. the hub probe, offline -------------------------------------------------------------------------------------

@pytest.fixture()
def probe(monkeypatch):
    """`hub.unreachable`, asked afresh (no cached answer, no proxy, not offline unless a test says so)."""
    from huggingface_hub import constants

    from mfdeploy.models import hub

    for var in (*hub.PROXY_VARS, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub._probe.cache_clear()
    yield hub
    hub._probe.cache_clear()


def _no_network(*args, **kwargs):
    raise AssertionError("no lookup nor connection may be tried")


def test_offline_mode_set_after_import_is_honoured_without_touching_the_network(probe, monkeypatch):
    """`HF_HUB_OFFLINE=1` set once huggingface_hub was imported (a notebook, the Python API) was not seen: its
    constant is read at import, and the probe then tried the network."""
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert probe.unreachable() == "offline mode: HF_HUB_OFFLINE is set"


def test_a_name_lookup_that_never_answers_is_cut_short(probe, monkeypatch):
    """The connection timeout does not bound the name lookup (getaddrinfo): a resolver that gets no answer held the
    probe for its own retries. It gets the probe's time, then the hub counts as unreachable."""
    release = threading.Event()

    def hanging(*args, **kwargs):
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_S", 0.05)
    try:
        assert probe.unreachable() == "huggingface.co: no answer to the name lookup within 0.05 s"
    finally:
        release.set()


def test_the_probe_spends_its_time_once_over_every_address(probe, monkeypatch):
    """`socket.create_connection(..., timeout=3)` gives each address the hub's name resolves to 3 s of its own: a
    firewall that drops packets held the probe 3 s times the number of addresses. They share the 3 s now."""
    addresses = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"192.0.2.{i}", 443)) for i in range(1, 5)]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: addresses)
    given: list[float] = []
    now = [0.0]

    class Dropped:  # a socket whose every connection attempt waits out its timeout
        def __init__(self, *args, **kwargs):
            self.timeout = None

        def settimeout(self, timeout):
            self.timeout = timeout

        def connect(self, address):
            given.append(self.timeout)
            now[0] += self.timeout
            raise TimeoutError("timed out")

        def close(self):
            pass

    monkeypatch.setattr(socket, "socket", Dropped)
    monkeypatch.setattr(probe.time, "monotonic", lambda: now[0])
    assert probe.unreachable() == "huggingface.co:443: timed out"
    assert given and sum(given) <= probe.PROBE_TIMEOUT_S


def test_a_hub_id_neither_here_nor_cached_nor_reachable_is_one_line(probe, monkeypatch, tmp_path, capsys):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.chdir(tmp_path)
    assert run_cli(["info", "mfdeploy-tests/no-such-model"]) == 2
    from huggingface_hub import constants

    assert one_error(capsys) == (
        "error: mfdeploy-tests/no-such-model: no such model here: no folder of that name, and the local Hugging Face "
        f"cache ({constants.HF_HUB_CACHE}) does not hold it (its config); nor can the hub be reached "
        "(huggingface.co: name lookup failed: Name or service not known): download it where the hub is reachable "
        "(`hf download mfdeploy-tests/no-such-model`) and copy that cache here, or pass a local checkpoint directory "
        "(save_pretrained)")


# ---- 4. an output a killed run had moved aside ----------------------------------------------------------------------

# Replaces an existing output with --force, and is killed between moving the old one aside and putting the new one in
# place (the real rename code, up to the moment a SIGKILL would stop it).
KILLED_REPLACER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from mfdeploy.artifacts.io import atomic_dir
    out = Path(sys.argv[1])
    real, calls = os.replace, []
    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the first moved `out` aside; this one would put the new tree in place
            os._exit(9)
        real(src, dst)
    os.replace = replace
    with atomic_dir(out, force=True) as tmp:
        (tmp / "build.json").write_text("new")
""")


@pytest.fixture()
def moved_aside(tiny_build, tmp_path) -> Path:
    """A copy of the tiny build, replaced by a run killed between its two renames: only the aside copy is left."""
    build = shutil.copytree(tiny_build, tmp_path / "work" / "build")
    proc = subprocess.run([sys.executable, "-c", KILLED_REPLACER, str(build)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert not build.exists()
    return build


@pytest.mark.parametrize("argv", [["info"], ["serve", "--port", "0"], ["eval"], ["bench"]])
def test_a_read_only_command_says_how_to_put_back_an_output_a_killed_run_moved_aside(moved_aside, tiny_build, argv,
                                                                                     capsys):
    """A kill between the two renames that replace an output (`--force`) leaves the previous tree in `.NAME.old-*/NAME`
    and nothing at NAME; the next run writing beside it puts it back, but `info`, `serve`, `eval` and `bench` said
    only that NAME does not exist. They say what happened and the command that puts it back (and change nothing)."""
    build = moved_aside
    (aside,) = build.parent.glob(".build.old-*")
    assert run_cli([argv[0], str(build), *argv[1:]]) == 2
    pid = json.loads((aside / ".mfdeploy-owner").read_text())["pid"]
    assert one_error(capsys) == (f"error: {build}: missing: a run killed while replacing it (pid {pid}) left the "
                                 f"previous copy in {aside / 'build'}; put it back with `mv {aside / 'build'} {build}` "
                                 f"(the next mfdeploy command that writes into {build.parent} does it too)")
    assert not build.exists() and (aside / "build" / "build.json").is_file()
    shutil.move(aside / "build", build)  # the command the line gives
    assert (build / "build.json").read_bytes() == (tiny_build / "build.json").read_bytes()
    assert run_cli(["info", str(build)]) == 0


def test_an_output_moved_aside_by_a_run_still_alive_is_not_called_killed(tmp_path, capsys):
    """Between its two renames a live run's output is missing too (or the run is on another host, where its end
    cannot be seen): the line says to wait for it, not that it was killed."""
    from mfdeploy.artifacts.tempdirs import aside_prefix, make_temp_dir

    work = tmp_path / "work"
    work.mkdir()
    aside = make_temp_dir(work, aside_prefix("onnx"), restore="onnx")  # this process is the run replacing it
    (aside / "onnx").mkdir()
    assert run_cli(["serve", str(work / "onnx"), "--port", "0"]) == 2
    assert one_error(capsys) == (f"error: {work / 'onnx'}: missing while a running mfdeploy (pid "
                                 f"{json.loads((aside / '.mfdeploy-owner').read_text())['pid']}) replaces it; the "
                                 f"previous copy is in {aside / 'onnx'}: retry once that run ends (if it is gone, put "
                                 f"the copy back with `mv {aside / 'onnx'} {work / 'onnx'}`)")


# ---- 5. slowloris: a client that never finishes its headers ---------------------------------------------------------

def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout, if it never does, fails)."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_a_client_that_never_finishes_its_headers_is_disconnected(exports, tmp_path):
    """uvicorn has no time limit on request headers: a client that sends them a byte at a time (or never ends them)
    held its connection for ever, on opening and after a response alike (any byte cancels uvicorn's keep-alive
    timer). `--header-timeout S` (default 20) closes such a connection; complete requests are served as before."""
    import os
    import re
    import signal
    import time

    log = tmp_path / "serve.log"
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "mfdeploy.cli", "serve", str(exports["dense"]), "--port", "0",
                                 "--header-timeout", "0.5"], stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        while (match := re.search(r"on http://([\d.]+):(\d+)", log.read_text())) is None:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        address = (match.group(1), int(match.group(2)))
        with socket.create_connection(address, timeout=60) as sock:  # headers begun, never ended
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            assert _read_to_close(sock) == b""
        with socket.create_connection(address, timeout=60) as sock:  # a request served, then a slow one begun
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 "), first
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            assert b"HTTP/1.1 " not in _read_to_close(sock)[len(first):]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_bad_header_timeout_is_one_line(exports, capsys, value):
    assert run_cli(["serve", str(exports["dense"]), "--header-timeout", value, "--port", "0"]) == 2
    assert one_error(capsys) == f"error: --header-timeout {float(value)}: must be a finite number above 0 (0: no limit)"
