"""`mfdeploy triton`: every config.pbtxt parses with Triton's own schema and states its graph's inputs and outputs,
the copied models run like the build's, external data stays valid, the preprocessing files load, the README's
client runs (against a stand-in for the server: no Triton server runs here), and bad input writes nothing."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from helpers import run_cli
from tritonclient.grpc import model_config_pb2 as mc

from mfdeploy.cli import main

TOWERS = ("vision", "text")
# ONNX element type -> Triton data type, written out here rather than taken from mfdeploy
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64,
                  onnx.TensorProto.FLOAT16: mc.TYPE_FP16, onnx.TensorProto.INT32: mc.TYPE_INT32}
NUMPY_TO_TRITON = {"float32": "FP32", "int64": "INT64", "float16": "FP16", "int32": "INT32"}


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def graph_io(path: Path) -> tuple[list, list]:
    """(inputs, outputs) of an ONNX graph as (name, elem type, shape with dim names or sizes)."""
    model = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}

    def rows(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    return rows(v for v in model.graph.input if v.name not in weights), rows(model.graph.output)


def assert_config_states(config: mc.ModelConfig, graph: Path) -> None:
    """Names, data types and dims of `config` are the graph's, batch axis left out, -1 where dynamic."""
    for declared, actual in ((config.input, graph_io(graph)[0]), (config.output, graph_io(graph)[1])):
        assert [t.name for t in declared] == [name for name, _, _ in actual]
        for t, (_, elem, shape) in zip(declared, actual):
            assert t.data_type == ONNX_TO_TRITON[elem], (t.name, t.data_type, elem)
            assert isinstance(shape[0], str)  # a dynamic batch axis, left out of dims
            assert list(t.dims) == [d if isinstance(d, int) and d > 0 else -1 for d in shape[1:]], t.name


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def build(tiny_clip_dir, tmp_path_factory) -> Path:
    """A tiny build with INT8 towers (onnx/, onnx_int8/, onnx_qdq/); no engines without TensorRT."""
    out = tmp_path_factory.mktemp("triton_build") / "build"
    main(["build", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--calib", "shapes", "--calib-samples", "16",
          "--int8", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def repo(build, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton_repo") / "repo"
    assert run_cli(["triton", str(build), "--out", str(out)]) == 0
    return out


@pytest.fixture()
def build_copy(build, tmp_path) -> Path:
    """A copy of the module's build to change."""
    return Path(shutil.copytree(build, tmp_path / "build"))


def feeds(tower: str, build: Path, n: int = 4) -> dict[str, np.ndarray]:
    samples = np.load(build / "onnx" / "parity_inputs.npz")
    names = ("pixel_values",) if tower == "vision" else ("input_ids", "attention_mask")
    return {k: samples[k][:n] for k in names}


def run(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def test_every_config_parses_with_tritons_schema_and_states_its_graph(repo, build):
    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    assert models == sorted(f"clip_{t}_{f}" for t in TOWERS for f in ("onnx", "onnx_int8"))
    record = json.loads((repo / "triton.json").read_text())
    assert set(record["models"]) == set(models)
    # default max batch: the build's engine profile (recorded even though the engines were skipped here)
    profile_max = json.loads((build / "build.json").read_text())["engine"]["profiles"]["vision"]["pixel_values"]["max"]
    assert record["max_batch"] == profile_max[0] == 32
    for name in models:
        config = read_config(repo / name)
        folder = "onnx_int8" if name.endswith("_int8") else "onnx"
        tower = name.split("_")[1]
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 32
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 100
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert_config_states(config, build / folder / f"{tower}.onnx")
        assert (repo / name / "1" / "model.onnx").is_file()
        assert sha(repo / name / "1" / "model.onnx") == sha(build / folder / f"{tower}.onnx")
        assert record["models"][name]["io_from"] == f"{folder}/{tower}.onnx"
    # the text length is dynamic, the image size and embedding width are the graph's numbers
    text = read_config(repo / "clip_text_onnx")
    assert [list(t.dims) for t in text.input] == [[-1], [-1]] and list(text.output[0].dims) == [16]
    assert list(read_config(repo / "clip_vision_onnx").input[0].dims) == [3, 32, 32]


def test_copied_models_give_the_builds_outputs(repo, build):
    for folder, suffix in (("onnx", "onnx"), ("onnx_int8", "onnx_int8")):
        for tower in TOWERS:
            inputs = feeds(tower, build)
            got = run(repo / f"clip_{tower}_{suffix}" / "1" / "model.onnx", inputs)
            np.testing.assert_array_equal(got, run(build / folder / f"{tower}.onnx", inputs))


def test_preprocessing_loads_and_matches_the_checkpoint(repo, build):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer

    pre = repo / "preprocessing"
    assert {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= {p.name for p in pre.iterdir()}
    captions = ["a red circle", "two small blue squares to the left of a green triangle"]
    mine = AutoTokenizer.from_pretrained(pre)(captions, padding="max_length", max_length=48, return_tensors="np")
    theirs = AutoTokenizer.from_pretrained(build / "pruned")(captions, padding="max_length", max_length=48,
                                                              return_tensors="np")
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(mine[key], theirs[key])
    image = Image.new("RGB", (50, 40), (200, 30, 30))
    pixels = AutoImageProcessor.from_pretrained(pre)(images=[image], return_tensors="np")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    theirs = AutoImageProcessor.from_pretrained(build / "pruned")(images=[image], return_tensors="np")
    np.testing.assert_array_equal(pixels, theirs["pixel_values"])


def test_record_lists_sources_with_their_sha256(repo, build):
    record = json.loads((repo / "triton.json").read_text())
    assert record["served_by_triton"] is False and record["max_batch"] == 32
    assert record["build_sha256"] == sha(build / "build.json")
    assert {"mfdeploy", "onnx", "onnxruntime"} <= set(record["versions"])
    for name, model in record["models"].items():
        assert model["files"], name
        for in_repo, copied in model["files"].items():
            assert copied["sha256"] == sha(build / copied["source"]) == sha(repo / in_repo), name
            assert record["artifacts"][in_repo]["sha256"] == copied["sha256"]
    assert (repo / ".mfdeploy-files").is_file() and "tritonserver" in (repo / "README.md").read_text()
    assert "not served here" in (repo / "README.md").read_text().lower()
    assert "-1 is the dynamic text length" in (repo / "README.md").read_text()  # CLIP: texts of any length


class _StandIn:
    """A stand-in for tritonclient.http and the server behind it: each request is checked against the model's
    config.pbtxt (Triton's schema) the way Triton checks it, then run with ONNX Runtime on the model's file."""

    def __init__(self, repo: Path):
        self.repo, self.calls = repo, []

    def module(self) -> types.ModuleType:
        stand_in = self

        class InferInput:
            def __init__(self, name, shape, datatype):
                self.name, self.shape, self.datatype, self.data = name, list(shape), datatype, None

            def set_data_from_numpy(self, array):
                assert list(array.shape) == self.shape and NUMPY_TO_TRITON[str(array.dtype)] == self.datatype
                self.data = array

        class InferRequestedOutput:
            def __init__(self, name):
                self.name = name

        class Result:
            def __init__(self, outputs):
                self.outputs = outputs

            def as_numpy(self, name):
                return self.outputs[name]

        class InferenceServerClient:
            def __init__(self, url):
                self.url = url

            def infer(self, model_name, inputs, outputs=None):
                return Result(stand_in.infer(model_name, inputs, outputs))

        mod = types.ModuleType("tritonclient.http")
        mod.InferInput, mod.InferRequestedOutput, mod.InferenceServerClient = (
            InferInput, InferRequestedOutput, InferenceServerClient)
        return mod

    def infer(self, model_name, inputs, outputs):
        config = read_config(self.repo / model_name)
        declared = {t.name: t for t in config.input}
        assert sorted(declared) == sorted(i.name for i in inputs)
        batch = {i.shape[0] for i in inputs}
        assert len(batch) == 1 and 1 <= batch.pop() <= config.max_batch_size
        for i in inputs:
            t = declared[i.name]
            assert mc.DataType.Name(t.data_type) == f"TYPE_{i.datatype}"
            assert len(i.shape) == len(t.dims) + 1 and all(d in (-1, s) for d, s in zip(t.dims, i.shape[1:]))
        model = self.repo / model_name / "1" / "model.onnx"
        model = model / "model.onnx" if model.is_dir() else model
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        names = [o.name for o in outputs] if outputs else [t.name for t in config.output]
        assert set(names) <= {t.name for t in config.output}
        self.calls.append(model_name)
        return dict(zip(names, session.run(names, {i.name: i.data for i in inputs})))


def test_readme_client_example_runs_against_a_stand_in(repo, build, tmp_path, monkeypatch, capsys):
    from PIL import Image

    copy = Path(shutil.copytree(repo, tmp_path / "repo"))
    code = re.search(r"```python\n(.*?)```", (copy / "README.md").read_text(), re.S).group(1)
    Image.new("RGB", (64, 48), (30, 60, 200)).save(copy / "photo.jpg")
    stand_in = _StandIn(copy)
    monkeypatch.setitem(sys.modules, "tritonclient.http", stand_in.module())
    monkeypatch.chdir(copy)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert stand_in.calls == ["clip_text_onnx", "clip_vision_onnx"]
    assert scope["text_embeds"].shape == (2, 16) and scope["image_embeds"].shape == (1, 16)
    # the same ids through the build's own tower
    ids = {k: scope["texts"][k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    np.testing.assert_allclose(scope["text_embeds"], run(build / "onnx" / "text.onnx", ids), rtol=0, atol=0)
    # and the model's own scores: CLIP's softmax over the texts of exp(logit_scale) * cosine
    from transformers import CLIPModel

    scale = CLIPModel.from_pretrained(build / "pruned").logit_scale.exp().item()
    logits = scale * scope["cosine"]
    want = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(scope["probs"], want / want.sum(axis=1, keepdims=True), rtol=1e-6)
    assert json.loads((copy / "triton.json").read_text())["scoring"]["function"] == "softmax"


def test_options_reach_the_configs(build, tmp_path):
    out = tmp_path / "repo"
    assert run_cli(["triton", str(build), "--out", str(out), "--prefix", "shapes", "--onnx-kind", "gpu",
                    "--max-batch", "4", "--max-queue-delay-us", "0"]) == 0
    for tower in TOWERS:
        fp32, int8 = read_config(out / f"shapes_{tower}_onnx"), read_config(out / f"shapes_{tower}_onnx_int8")
        assert fp32.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert int8.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU  # INT8 kernels: ONNX Runtime's CPU
        assert fp32.max_batch_size == int8.max_batch_size == 4
        assert fp32.dynamic_batching.max_queue_delay_microseconds == 0


def _openvino_embeds(model: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The model file run as Triton's OpenVINO backend loads it (OpenVINO reading the ONNX file), in f32."""
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(model)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(inputs)[0])


def test_openvino_kind_writes_openvino_backend_configs(repo, build, tmp_path):
    out = tmp_path / "repo"
    assert run_cli(["triton", str(build), "--out", str(out), "--onnx-kind", "openvino"]) == 0
    record = json.loads((out / "triton.json").read_text())
    assert sorted(record["models"]) == sorted(f"clip_{t}_openvino{s}" for t in TOWERS for s in ("", "_int8"))
    for name, entry in record["models"].items():
        config = read_config(out / name)
        folder = "onnx_int8" if name.endswith("_int8") else "onnx"
        tower = name.split("_")[1]
        assert config.name == name and config.backend == "openvino" and config.platform == ""
        assert config.default_model_filename == "model.onnx"
        assert {k: v.string_value for k, v in config.parameters.items()} == {"NUM_STREAMS": "1",
                                                                            "PERFORMANCE_HINT": "LATENCY"}
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]  # OpenVINO: CPU only
        assert config.max_batch_size == 32 and config.dynamic_batching.max_queue_delay_microseconds == 100
        assert_config_states(config, build / folder / f"{tower}.onnx")
        assert sha(out / name / "1" / "model.onnx") == sha(build / folder / f"{tower}.onnx")
        assert entry["format"] == entry["platform"] == "openvino" and entry["io_from"] == f"{folder}/{tower}.onnx"
        inputs = feeds(tower, build)  # the copied file, as OpenVINO runs it, gives the build's tower's embeddings
        np.testing.assert_allclose(_openvino_embeds(out / name / "1" / "model.onnx", inputs),
                                   run(build / folder / f"{tower}.onnx", inputs), rtol=0, atol=1e-5)
    readme = (out / "README.md").read_text()
    assert "OpenVINO backend" in readme and "mfdeploy eval BUILD --backend openvino" in readme
    assert "--load-model=clip_vision_openvino" in readme
    # the ONNX Runtime repository's configs say nothing of OpenVINO
    assert "openvino" not in (repo / "clip_vision_onnx" / "config.pbtxt").read_text()


def test_openvino_external_data_sits_beside_the_model_it_names(build, build_copy, tmp_path):
    """OpenVINO reads the file the config names (not Triton's model.onnx folder): its data goes beside it."""
    _external(build_copy, "weights/vision.bin")
    out = tmp_path / "repo"
    assert run_cli(["triton", str(build_copy), "--out", str(out), "--onnx-kind", "openvino"]) == 0
    version = out / "clip_vision_openvino" / "1"
    assert (version / "model.onnx").is_file() and sha(version / "weights" / "vision.bin") == \
        sha(build_copy / "onnx" / "weights" / "vision.bin")
    inputs = feeds("vision", build)
    np.testing.assert_allclose(_openvino_embeds(version / "model.onnx", inputs),
                               run(build / "onnx" / "vision.onnx", inputs), rtol=0, atol=1e-5)


def _with_engines(build: Path, max_batch: int = 8, int8: bool = False, engine_json: int | None = None) -> None:
    """Fake TensorRT plans in `engines/`, and build.json's engine record saying they were built (profile max)."""
    (build / "engines").mkdir()
    for tower in TOWERS:
        (build / "engines" / f"{tower}.plan").write_bytes(f"fake {tower} plan".encode())
    data = json.loads((build / "build.json").read_text())
    for inputs in data["engine"]["profiles"].values():
        for shapes in inputs.values():
            shapes["max"][0] = max_batch
    data["engine"].update(status="built", int8=int8, tensorrt="10.0.0")
    (build / "build.json").write_text(json.dumps(data))
    if engine_json is not None:  # `mfdeploy engine BUILD` later: engines/engine.json wins
        record = json.loads(json.dumps(data["engine"]))
        for inputs in record["profiles"].values():
            for shapes in inputs.values():
                shapes["max"][0] = engine_json
        (build / "engines" / "engine.json").write_text(json.dumps(record))


@pytest.mark.parametrize("int8", [False, True], ids=["fp32-engines", "int8-engines"])
def test_plans_get_tensorrt_configs_from_the_graph_they_were_built_from(build_copy, tmp_path, int8):
    _with_engines(build_copy, max_batch=8, int8=int8)
    out = tmp_path / "repo"
    assert run_cli(["triton", str(build_copy), "--out", str(out)]) == 0
    record = json.loads((out / "triton.json").read_text())
    assert record["max_batch"] == 8  # the engines' profile, the default for every model
    source = "onnx_qdq" if int8 else "onnx"
    for tower in TOWERS:
        config = read_config(out / f"clip_{tower}_plan")
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert_config_states(config, build_copy / source / f"{tower}.onnx")
        assert (out / f"clip_{tower}_plan" / "1" / "model.plan").read_bytes() == f"fake {tower} plan".encode()
        assert record["models"][f"clip_{tower}_plan"]["io_from"] == f"{source}/{tower}.onnx"
        assert read_config(out / f"clip_{tower}_onnx").max_batch_size == 8
    assert "TensorRT 10.0.0" in (out / "README.md").read_text()


def test_max_batch_above_the_engine_profile_is_refused(build_copy, tmp_path, capsys):
    _with_engines(build_copy, max_batch=8, engine_json=4)
    before = snapshot(tmp_path)
    assert run_cli(["triton", str(build_copy), "--out", str(tmp_path / "repo"), "--max-batch", "8"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--max-batch 8" in err and "(4)" in err, err
    assert snapshot(tmp_path) == before
    assert run_cli(["triton", str(build_copy), "--out", str(tmp_path / "repo")]) == 0  # engine.json's 4
    assert read_config(tmp_path / "repo" / "clip_text_plan").max_batch_size == 4


def _external(build: Path, location: str) -> None:
    """Re-save the build's onnx/vision.onnx with its weights in `location` (relative to it), as the exporter does
    for towers near 2 GB, and record the new hashes in build.json."""
    from mfdeploy.artifacts.io import file_records

    path = build / "onnx" / "vision.onnx"
    model = onnx.load(str(path))
    (path.parent / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=1024)
    data = json.loads((build / "build.json").read_text())
    data["artifacts"] = file_records(build, skip=("build.json",))
    (build / "build.json").write_text(json.dumps(data))


@pytest.mark.parametrize("location", ["vision.onnx.data", "weights/vision.bin"])
def test_external_data_is_copied_beside_the_model(build, build_copy, tmp_path, location):
    _external(build_copy, location)
    out = tmp_path / "repo"
    assert run_cli(["triton", str(build_copy), "--out", str(out)]) == 0
    folder = out / "clip_vision_onnx" / "1" / "model.onnx"  # Triton's layout for a model in several files
    assert folder.is_dir() and (folder / "model.onnx").is_file()
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {location} and (folder / location).is_file()
    assert sha(folder / location) == sha(build_copy / "onnx" / location)
    inputs = feeds("vision", build)
    np.testing.assert_allclose(run(folder / "model.onnx", inputs), run(build / "onnx" / "vision.onnx", inputs),
                               rtol=0, atol=1e-6)
    assert_config_states(read_config(out / "clip_vision_onnx"), build_copy / "onnx" / "vision.onnx")
    assert (out / "clip_text_onnx" / "1" / "model.onnx").is_file()  # the other tower: one file, as before


def test_exporters_external_data_is_copied(build, build_copy, tmp_path):
    """The towers `mfdeploy export --external-data` writes (what a model near 2 GB gets) keep working."""
    from mfdeploy.artifacts.io import file_records
    from mfdeploy.exporting import export_towers
    from mfdeploy.models import load

    staging = tmp_path / "onnx"
    export_towers(load(build / "pruned"), staging, external_data=True)
    for tower in TOWERS:
        for name in (f"{tower}.onnx", f"{tower}.onnx.data"):
            shutil.copyfile(staging / name, build_copy / "onnx" / name)
    data = json.loads((build_copy / "build.json").read_text())
    data["artifacts"] = file_records(build_copy, skip=("build.json",))
    (build_copy / "build.json").write_text(json.dumps(data))
    out = tmp_path / "repo"
    assert run_cli(["triton", str(build_copy), "--out", str(out)]) == 0
    for tower in TOWERS:
        folder = out / f"clip_{tower}_onnx" / "1" / "model.onnx"
        assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", f"{tower}.onnx.data"]
        inputs = feeds(tower, build)
        np.testing.assert_allclose(run(folder / "model.onnx", inputs), run(build / "onnx" / f"{tower}.onnx", inputs),
                                   rtol=0, atol=1e-5)


def _unlink(build: Path) -> None:
    shutil.rmtree(build / "onnx")


def _escape(build: Path) -> None:
    _external(build, "vision.onnx.data")
    path = build / "onnx" / "vision.onnx"
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere.data"
    onnx.save_model(model, str(path))
    data = json.loads((build / "build.json").read_text())
    data["artifacts"].pop("onnx/vision.onnx")
    (build / "build.json").write_text(json.dumps(data))


@pytest.mark.parametrize("case, message", [
    ("missing", "not a directory"),
    ("not-a-build", "not a build directory"),
    ("no-onnx", "no onnx/vision.onnx or onnx/text.onnx"),
    ("max-batch-0", "--max-batch must be 1 or more"),
    ("onnx-kind", "--onnx-kind must be one of cpu, gpu, openvino (got 'tpu')"),
    ("prefix", "--prefix"),
    ("out-is-build", "would replace the build directory"),
    ("out-holds-build", "holds the build directory"),  # was "would replace the build directory ... itself"
    ("out-in-build", "is inside the build"),
    ("escaping-external-data", "not a path inside the model's folder"),
    ("missing-external-data", "external data file"),
    ("changed-onnx", "sha256"),
    ("no-tokenizer", "pruned: no tokenizer.json"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, message, build_copy, tiny_clip_dir, tmp_path, capsys):
    src, out, extra = build_copy, tmp_path / "repo", []
    if case == "missing":
        src = tmp_path / "nope"
    elif case == "not-a-build":
        src = tiny_clip_dir
    elif case == "no-onnx":
        _unlink(build_copy)
    elif case == "max-batch-0":
        extra = ["--max-batch", "0"]
    elif case == "onnx-kind":
        extra = ["--onnx-kind", "tpu"]
    elif case == "prefix":
        extra = ["--prefix", "../x"]
    elif case == "out-is-build":
        out, extra = build_copy, ["--force"]
    elif case == "out-holds-build":
        out, extra = build_copy.parent, ["--force"]
    elif case == "out-in-build":
        out = build_copy / "triton"
    elif case == "escaping-external-data":
        _escape(build_copy)
    elif case == "missing-external-data":
        _external(build_copy, "vision.onnx.data")
        (build_copy / "onnx" / "vision.onnx.data").unlink()
        data = json.loads((build_copy / "build.json").read_text())
        data["artifacts"].pop("onnx/vision.onnx.data")  # else build.json's record names it first
        (build_copy / "build.json").write_text(json.dumps(data))
    elif case == "changed-onnx":
        with open(build_copy / "onnx" / "text.onnx", "ab") as f:
            f.write(b"\0")
    elif case == "no-tokenizer":
        (build_copy / "pruned" / "tokenizer.json").unlink()
        data = json.loads((build_copy / "build.json").read_text())
        data["artifacts"].pop("pruned/tokenizer.json")
        (build_copy / "build.json").write_text(json.dumps(data))
    before = snapshot(tmp_path)
    assert run_cli(["triton", str(src), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert snapshot(tmp_path) == before


def test_force_rules(build, tmp_path, capsys):
    out = tmp_path / "repo"
    assert run_cli(["triton", str(build), "--out", str(out)]) == 0
    assert run_cli(["triton", str(build), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert run_cli(["triton", str(build), "--out", str(out), "--force", "--max-batch", "2"]) == 0
    assert read_config(out / "clip_vision_onnx").max_batch_size == 2
    (out / "notes.md").write_text("mine")
    before = snapshot(tmp_path)
    assert run_cli(["triton", str(build), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "notes.md" in err and len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "data.txt").write_text("x")
    assert run_cli(["triton", str(build), "--out", str(foreign), "--force"]) == 2
    assert "mfdeploy did not write it" in capsys.readouterr().err and (foreign / "data.txt").is_file()


def test_plans_without_a_recorded_profile_warn(build_copy, tmp_path, capsys):
    _with_engines(build_copy)
    data = json.loads((build_copy / "build.json").read_text())
    data["engine"]["profiles"] = {}
    (build_copy / "build.json").write_text(json.dumps(data))
    assert run_cli(["triton", str(build_copy), "--out", str(tmp_path / "repo")]) == 0
    err = capsys.readouterr().err
    assert "no engine profile recorded" in err and "vision.plan" in err and "text.plan" in err
    assert read_config(tmp_path / "repo" / "clip_vision_plan").max_batch_size == 32
