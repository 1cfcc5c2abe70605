"""Zero-shot and retrieval metrics, the evaluation sets, `evaluate_model`, retention and `mfdeploy eval`.

The tiny fixture model is random, so accuracies are near chance: these tests
check mechanics (exact metrics on constructed inputs, schema, plumbing,
errors), not quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mfdeploy.data import world
from mfdeploy.errors import UserError
from mfdeploy.eval import (
    RETRIEVAL_KEYS,
    ClassTask,
    EvalSet,
    evaluate,
    evaluate_model,
    evaluate_with_retention,
    prepare,
    resolve_data,
    retention,
    retrieval_recall,
    shapes_suite,
    write_result,
    zero_shot_accuracy,
)
from mfdeploy.eval.prepare import Prepared
from mfdeploy.runtime.base import Runner

SMALL = {"n_images": 24, "n_retrieval": 16}  # shapes suite sizes for the tiny model


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ---------------------------------------------------------------------------- metrics on hand-made inputs


def test_zero_shot_accuracy_hand_computed():
    classes = np.eye(3, dtype=np.float32)  # class c embeds as e_c
    images = _unit(np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0, 0.3, 0.9]], dtype=np.float32))
    # predictions: 0, 1, 0, 2
    assert zero_shot_accuracy(images, classes, np.array([0, 1, 2, 2])) == pytest.approx(0.75)
    assert zero_shot_accuracy(images, classes, np.array([0, 1, 0, 2])) == 1.0
    assert zero_shot_accuracy(images, classes, np.array([1, 0, 1, 0])) == 0.0
    with pytest.raises(ValueError):
        zero_shot_accuracy(images, classes, np.array([0, 1]))
    # ties are broken at random: one image embedding for every input scores chance, not the share of class 0
    same = np.full((6, 3), 3 ** -0.5, dtype=np.float32)
    assert zero_shot_accuracy(same, same[:3], np.array([0, 0, 0, 0, 1, 2])) == pytest.approx(1 / 3)
    # an image level between classes 0 and 1 counts 1/2 for either, 0 for class 2
    half = _unit(np.array([[1.0, 1.0, 0.0]], dtype=np.float32))
    assert [zero_shot_accuracy(half, classes, np.array([c])) for c in range(3)] == [0.5, 0.5, 0.0]


def test_retrieval_recall_hand_computed():
    # 6 images x 6 captions, image i paired with caption i
    n = 6
    sim = np.zeros((n, n))
    for i in range(n):
        sim[i, i] = 1.0  # every pair first...
    sim[1, 3] = 2.0  # ...except image 1, whose caption ranks 2nd (i2t), and caption 3, whose image ranks 2nd (t2i)
    sim[2] = [5, 4, 3, 2, 1.5, 0.0]  # image 2: own caption (col 2) ranks 3rd among its row
    sim[4] = [9, 8, 7, 6, 0.5, 5]  # image 4: own caption ranks 6th (last)
    # i2t ranks (0-based): img0 0, img1 1, img2 2, img3 0, img4 5, img5 0
    got = retrieval_recall(sim)
    assert got["i2t_r1"] == pytest.approx(3 / 6)
    assert got["i2t_r5"] == pytest.approx(5 / 6)
    # t2i, column j: caption0 col [1,0,5,0,9,0] -> own 1 vs 5,9 above: rank 2
    # caption1 col [0,1,4,0,8,0] -> rank 2; caption2 col [0,0,3,0,7,0] -> rank 1
    # caption3 col [0,2,2,1,6,0] -> rank 3; caption4 col [0,0,1.5,0,0.5,0] -> rank 1
    # caption5 col [0,0,0,0,5,1] -> rank 1
    assert got["t2i_r1"] == 0.0
    assert got["t2i_r5"] == 1.0
    assert set(got) == set(RETRIEVAL_KEYS)


def test_retrieval_recall_several_positives_and_ties():
    # 3 images, 2 captions: images 0 and 1 share caption 0 (the shapes world merges equal captions)
    sim = np.array([[0.2, 0.9], [0.8, 0.1], [0.3, 0.4]])
    positives = np.array([[1, 0], [1, 0], [0, 1]], dtype=bool)
    got = retrieval_recall(sim, positives, ks=(1, 2))
    # i2t: img0 -> caption1 first (miss@1, hit@2); img1 hit@1; img2 hit@1
    assert got["i2t_r1"] == pytest.approx(2 / 3) and got["i2t_r2"] == 1.0
    # t2i: caption0 -> best image 1 (a positive) hit; caption1 -> image0 (0.9) above image2 (0.4): miss@1
    assert got["t2i_r1"] == pytest.approx(1 / 2) and got["t2i_r2"] == 1.0
    # ties are broken at random: a row counts its chance of a hit (a degenerate tower scores chance, k / N)
    assert retrieval_recall(np.ones((4, 4))) == pytest.approx({"i2t_r1": 0.25, "i2t_r5": 1.0,
                                                                "t2i_r1": 0.25, "t2i_r5": 1.0})
    assert retrieval_recall(np.ones((10, 10)), ks=(1, 5, 10)) == pytest.approx(
        {"i2t_r1": 0.1, "i2t_r5": 0.5, "i2t_r10": 1.0, "t2i_r1": 0.1, "t2i_r5": 0.5, "t2i_r10": 1.0})
    # one row: 1 negative above, then a tie of 2 positives and 2 negatives (the rest below). @1: 0;
    # @2: the first of the tie is a positive (1/2); @3: not both negatives first (1 - 1/6); @4: 1
    row = np.array([[5.0, 3.0, 3.0, 3.0, 3.0, 0.0]])
    pos = np.array([[False, True, True, False, False, False]])
    positives = np.vstack([pos, np.eye(6, dtype=bool)[1:]])
    positives[5, 0] = True  # caption 0 needs an image
    got = retrieval_recall(np.vstack([row, np.eye(6)[1:]]), positives, ks=(1, 2, 3, 4))
    others = 5  # the identity rows below the first all hit at k=1
    assert [got[f"i2t_r{k}"] for k in (1, 2, 3, 4)] == pytest.approx(
        [(0 + others) / 6, (0.5 + others) / 6, (5 / 6 + others) / 6, 1.0])
    with pytest.raises(ValueError):
        retrieval_recall(np.ones((2, 3)))


def test_retention_arithmetic():
    dense = {"tasks": {"shape": 0.8, "colour": 0.5, "size": 0.0},
             "retrieval": {"i2t_r1": 0.4, "i2t_r5": 0.8, "t2i_r1": 0.5, "t2i_r5": 1.0}}
    pruned = {"tasks": {"shape": 0.6, "colour": 0.5, "size": 0.3},
              "retrieval": {"i2t_r1": 0.2, "i2t_r5": 0.8, "t2i_r1": 0.25, "t2i_r5": 0.9}}
    r = retention(pruned, dense)
    assert r["tasks"]["shape"] == pytest.approx(0.75)
    assert r["tasks"]["colour"] == pytest.approx(1.0)
    assert r["tasks"]["size"] is None  # dense 0: undefined, left out of the means
    assert r["mean_task_retention"] == pytest.approx((0.75 + 1.0) / 2)
    assert r["retrieval"] == pytest.approx({"i2t_r1": 0.5, "i2t_r5": 1.0, "t2i_r1": 0.5, "t2i_r5": 0.9})
    assert r["mean_retention"] == pytest.approx((0.75 + 1.0 + 0.5 + 1.0 + 0.5 + 0.9) / 6)
    empty = retention({"tasks": {}, "retrieval": {}}, {"tasks": {}, "retrieval": {}})
    assert empty["mean_task_retention"] is None and empty["mean_retention"] is None


class _OneHotRunner(Runner):
    """Embeds an image as the one-hot of its first pixel value, a text as the one-hot of its second token."""

    name = "fake"

    def __init__(self):
        self.text_lengths: list[int] = []

    def embed_images(self, pixel_values):
        return np.eye(8, dtype=np.float32)[pixel_values[:, 0, 0, 0].astype(int)]

    def embed_texts(self, input_ids, attention_mask):
        self.text_lengths.append(input_ids.shape[1])
        return np.eye(8, dtype=np.float32)[input_ids[:, 1]]


def test_evaluate_plumbing_with_a_known_runner():
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    pixels = np.zeros((7, 3, 2, 2), np.float32)
    pixels[:, 0, 0, 0] = labels
    prompt_ids = np.array([[9, 0, 9, 0], [9, 1, 9, 0], [9, 2, 9, 0]])  # class c -> token c, padded to 4
    prompt_mask = np.array([[1, 1, 1, 0]] * 3)
    wrong = np.array([0, 1, 2, 0, 1, 2, 0])  # one label of seven off
    evalset = EvalSet("test", "constructed", ("test",), images=(None,) * 7,
                      tasks={"right": ClassTask(("a", "b", "c"), ("", "", ""), tuple(labels)),
                             "wrong": ClassTask(("a", "b", "c"), ("", "", ""), tuple(wrong))})
    r_pixels = np.zeros((5, 3, 2, 2), np.float32)
    r_pixels[:, 0, 0, 0] = np.arange(5)
    caption_ids = np.array([[9, 0], [9, 1], [9, 2], [9, 3], [9, 4]])
    prepared = Prepared(evalset, pixels, {"right": (prompt_ids, prompt_mask), "wrong": (prompt_ids, prompt_mask)},
                        {"right": labels, "wrong": wrong}, r_pixels, caption_ids, np.ones_like(caption_ids),
                        np.eye(5, dtype=bool))
    runner = _OneHotRunner()
    result = evaluate(runner, prepared, batch_size=2)  # batches smaller than the data
    assert result["tasks"] == pytest.approx({"right": 1.0, "wrong": 6 / 7})
    assert result["retrieval"] == {k: 1.0 for k in RETRIEVAL_KEYS}
    assert 3 in runner.text_lengths and 4 not in runner.text_lengths  # the all-padding column is cut


# ---------------------------------------------------------------------------- evaluation sets


def test_shapes_suite_is_held_out_cached_and_labelled():
    suite = shapes_suite(**SMALL)
    assert shapes_suite(**SMALL) is suite  # rendered once per process
    assert set(suite.tasks) == set(world.TASKS) == {"shape", "colour", "size", "position"}
    assert len(suite.images) == SMALL["n_images"] and len(suite.retrieval_images) == SMALL["n_retrieval"]
    first = world.make_scene(world.split_seeds("eval", 1)[0], n_objects=1).objects[0]
    for attr, (classes, template) in world.TASKS.items():
        task = suite.tasks[attr]
        assert task.prompts == tuple(template.format(c) for c in classes)
        assert task.labels[0] == classes.index(getattr(first, attr))
    assert len(suite.pairs) == SMALL["n_retrieval"]
    assert {i for i, _ in suite.pairs} == set(range(SMALL["n_retrieval"]))
    assert len(set(suite.captions)) == len(suite.captions)  # equal captions merged


def test_resolve_data_kinds(tmp_path, shapes_pairs_jsonl):
    assert resolve_data("shapes", **SMALL).kind == "shapes"
    assert resolve_data(shapes_pairs_jsonl).kind == "jsonl"
    for bad, match in [(tmp_path / "missing.jsonl", "no such file"), (tmp_path, "two class sub-folders")]:
        with pytest.raises(UserError, match=match):
            resolve_data(bad)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="unknown kind of data"):
        resolve_data(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="--template"):
        resolve_data("shapes", template="a {}")


def test_prepare_is_cached_across_models(tiny_clip_dir):
    from mfdeploy.models import load

    suite = shapes_suite(**SMALL)
    a, b = load(tiny_clip_dir), load(tiny_clip_dir)  # two loads, as for two pruned variants
    prepared = prepare(a, suite)
    assert prepare(b, suite) is prepared
    assert prepared.pixels.shape == (SMALL["n_images"], 3, a.image_size, a.image_size)
    assert prepared.positives.shape == (SMALL["n_retrieval"], len(suite.captions))


# ---------------------------------------------------------------------------- evaluate_model and JSON


def _check_unit_interval(values: dict) -> None:
    assert all(0.0 <= v <= 1.0 for v in values.values()), values


def test_evaluate_model_shapes_schema(tiny_clip_dir, tmp_path):
    result = evaluate_model(tiny_clip_dir, "shapes", "torch", **SMALL)
    assert set(result["tasks"]) == {"shape", "colour", "size", "position"}
    assert set(result["retrieval"]) == set(RETRIEVAL_KEYS)
    _check_unit_interval(result["tasks"])
    _check_unit_interval(result["retrieval"])
    path = write_result(result, tmp_path / "sub" / "eval.json")
    loaded = json.loads(path.read_text())
    assert loaded["tasks"] == result["tasks"] and loaded["retrieval"] == result["retrieval"]
    assert loaded["counts"]["images"] == SMALL["n_images"]
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temporary file left


def test_evaluate_model_jsonl(tiny_adapter, shapes_pairs_jsonl):
    result = evaluate_model(tiny_adapter, shapes_pairs_jsonl)
    assert result["tasks"] == {}
    assert set(result["retrieval"]) == set(RETRIEVAL_KEYS)
    _check_unit_interval(result["retrieval"])
    assert result["counts"]["retrieval_pairs"] == 12


def _image_folder(root: Path) -> Path:
    for shape in ("circle", "square"):
        (root / shape).mkdir(parents=True)
    seeds = world.split_seeds("eval", 400, offset=200_000)
    made = {"circle": 0, "square": 0}
    for seed in seeds:
        scene = world.make_scene(seed, n_objects=1)
        shape = scene.objects[0].shape
        if shape in made and made[shape] < 3:
            scene.render().save(root / shape / f"{seed}.png")
            made[shape] += 1
    assert made == {"circle": 3, "square": 3}
    return root


def test_evaluate_model_image_folder(tiny_adapter, tmp_path):
    folder = _image_folder(tmp_path / "twoshapes")
    result = evaluate_model(tiny_adapter, folder, template="a photo of a {} shape.")
    assert list(result["tasks"]) == ["twoshapes"]
    assert result["tasks"]["twoshapes"] in {k / 6 for k in range(7)}
    assert result["retrieval"] == {}
    assert "a photo of a {} shape." in result["data"]


def test_retention_of_a_prune_directory(tiny_clip_dir, tmp_path):
    prune_dir = tmp_path / "prune"
    shutil.copytree(tiny_clip_dir, prune_dir / "pruned")  # "pruned" = dense weights: retention 1
    (prune_dir / "prune.json").write_text(json.dumps({"model": str(tiny_clip_dir), "ratio": 0.0}))
    messages: list[str] = []
    result = evaluate_with_retention(prune_dir, progress=messages.append, **SMALL)
    assert result["dense"]["tasks"] == result["tasks"]
    ret = result["retention"]
    assert set(ret["tasks"]) == set(result["tasks"])
    assert all(v is None or v == pytest.approx(1.0) for v in [*ret["tasks"].values(), *ret["retrieval"].values()])
    assert len(messages) == 2
    (prune_dir / "prune.json").write_text(json.dumps({"model": str(tmp_path / "gone")}))
    result = evaluate_with_retention(prune_dir, **SMALL)  # an unloadable dense model: no retention, no failure
    assert "retention" not in result and "gone" in result["retention_error"]


# ---------------------------------------------------------------------------- the command line


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    from mfdeploy.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_eval_writes_json_and_table(tiny_clip_dir, tmp_path, capsys):
    path = tmp_path / "eval.json"
    code, out, _ = _run_cli(["eval", str(tiny_clip_dir), "--images", "24", "--pairs", "16", "--json", str(path)],
                            capsys)
    assert code == 0
    result = json.loads(path.read_text())
    assert set(result["tasks"]) == set(world.TASKS) and set(result["retrieval"]) == set(RETRIEVAL_KEYS)
    assert "position" in out and "R@5" in out


def test_cli_eval_shows_retention(tiny_clip_dir, tmp_path, capsys):
    shutil.copytree(tiny_clip_dir, tmp_path / "build" / "pruned")
    (tmp_path / "build" / "prune.json").write_text(json.dumps({"model": str(tiny_clip_dir)}))
    code, out, _ = _run_cli(["eval", str(tmp_path / "build"), "--images", "24", "--pairs", "16"], capsys)
    assert code == 0 and "retention" in out and "mean task retention" in out


def _bad_inputs(tmp_path: Path, tiny: Path, pairs: Path) -> list[tuple[list[str], str]]:
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"image": "nowhere.png", "caption": "a red circle."}) + "\n")
    (tmp_path / "notes.txt").write_text("x")
    build = tmp_path / "build"
    shutil.copytree(tiny, build / "pruned")
    (build / "build.json").write_text(json.dumps({"model": str(tiny)}))
    return [
        (["eval", str(tmp_path / "no_such_model")], "does not exist"),
        (["eval", str(tiny), "--data", str(tmp_path / "missing.jsonl")], "no such file"),
        (["eval", str(tiny), "--data", str(tmp_path / "notes.txt")], "unknown kind of data"),
        (["eval", str(tiny), "--data", str(broken)], "does not exist"),
        (["eval", str(tiny), "--backend", "tensorflow"], "unknown backend"),
        (["eval", str(build), "--backend", "onnx"], "no onnx"),
        (["eval", str(tiny), "--template", "a {}"], "--template"),
        (["eval", str(tiny), "--data", str(pairs), "--json", str(tmp_path)], "is a directory"),
    ]


def test_cli_eval_bad_inputs_one_line(tmp_path, tiny_clip_dir, shapes_pairs_jsonl, capsys):
    for args, expected in _bad_inputs(tmp_path, tiny_clip_dir, shapes_pairs_jsonl):
        code, _, err = _run_cli(args, capsys)
        assert code != 0, args
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], (args, err)


# ---------------------------------------------------------------------------- ONNX Runtime backend


def test_torch_and_onnx_backends_agree(tiny_clip_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import mfdeploy.exporting
    from mfdeploy.exporting import export_towers
    from mfdeploy.models import load

    torch_result = evaluate_model(tiny_clip_dir, backend="torch", **SMALL)
    # a build directory: its onnx/ towers are used as they are
    build = tmp_path / "build"
    shutil.copytree(tiny_clip_dir, build / "pruned")
    (build / "build.json").write_text(json.dumps({"model": str(tiny_clip_dir)}))
    export_towers(load(tiny_clip_dir), build / "onnx")
    onnx_result = evaluate_model(build, backend="onnx", **SMALL)
    assert onnx_result["tasks"] == torch_result["tasks"]
    assert onnx_result["retrieval"] == pytest.approx(torch_result["retrieval"])
    # a plain checkpoint is exported to a temporary directory first (here by copying the towers just exported)
    calls: list[Path] = []

    def fake_export(adapter, out_dir):
        calls.append(Path(out_dir))
        for name in ("vision.onnx", "text.onnx"):
            shutil.copy(build / "onnx" / name, Path(out_dir) / name)

    assert evaluate_model(tiny_clip_dir, backend="onnx", exporter=fake_export, **SMALL)["tasks"] == \
        torch_result["tasks"]
    assert len(calls) == 1 and not calls[0].exists()  # the temporary export is removed
    # without an exporter (evaluation never imports one), a model without towers is refused in one line
    with pytest.raises(UserError, match="has no ONNX towers; export them first"):
        evaluate_model(tiny_clip_dir, backend="onnx", **SMALL)
    # the API hands in the real exporter
    monkeypatch.setattr(mfdeploy.exporting, "export_towers", fake_export)
    assert mfdeploy.evaluate(tiny_clip_dir, backend="onnx", retention=False, **SMALL)["tasks"] == torch_result["tasks"]
    assert len(calls) == 2


def test_image_folder_template_one_slot_other_braces_text(tmp_path):
    from mfdeploy.data.pairs import load_image_folder
    for c in ("red_circle", "square"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / c / "a.png")
    assert load_image_folder(tmp_path, "{x} a {} {0}").prompts() == ["{x} a red circle {0}", "{x} a square {0}"]
    for bad, what in (("a photo", "no '{}'"), ("a {} or {}", "2 '{}'")):
        with pytest.raises(UserError, match=what):
            load_image_folder(tmp_path, bad)
