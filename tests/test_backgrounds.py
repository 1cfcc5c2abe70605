"""Scenes on other backgrounds (`world.BACKGROUNDS`) and `benchmarks/backgrounds.py`, which scores a model on them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mfdeploy.data import world

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "backgrounds.py"


def _script():
    spec = importlib.util.spec_from_file_location("backgrounds_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_rendering_is_the_dark_background():
    for seed in world.split_seeds("eval", 5):
        scene = world.make_scene(seed)
        assert np.array_equal(np.asarray(scene.render()), np.asarray(scene.render("dark")))
        assert np.array_equal(np.asarray(world.render(scene)), np.asarray(scene.render("dark")))


@pytest.mark.parametrize("background", ["mid", "light"])
def test_other_backgrounds_change_only_the_background(background):
    lo, hi = world.BACKGROUNDS[background]
    for seed in world.split_seeds("eval", 20):
        scene = world.make_scene(seed, n_objects=1)
        dark = np.asarray(scene.render(), dtype=np.float32)
        other = np.asarray(scene.render(background), dtype=np.float32)
        row, col = divmod(world.POSITIONS.index(scene.objects[0].position), 3)
        corner = (slice(0, 32), slice(0, 32)) if (row, col) != (0, 0) else (slice(64, 96), slice(64, 96))
        assert lo - 15 < other[corner].mean() < hi + 15 and dark[corner].mean() < 95  # a cell with no object
        centre = int(world._CELL_CENTRES[row]), int(world._CELL_CENTRES[col])
        # the object (same colour, same place) is drawn alike: only noise clipping can differ at its centre
        assert np.abs(other[centre] - dark[centre]).max() <= 20


def test_unknown_background_is_refused():
    with pytest.raises(ValueError, match="expected one of dark, mid, light"):
        world.make_scene(1).render("white")


def test_backgrounds_benchmark_scores_the_eval_scenes(capsys):
    bench = _script()
    from mfdeploy.eval.datasets import shapes_suite

    dark, suite = bench.background_set(8, "dark"), shapes_suite(8, 1)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(dark.images, suite.images))
    assert dark.tasks == suite.tasks  # the same labels and prompts as `mfdeploy eval`
    bench.main(["--images", "24", "--backgrounds", "dark,light"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"dark", "light", "chance"}
    values = [float(v.strip().rstrip("%")) for v in rows["dark"].split("|")[3:8]]
    assert len(values) == 5 and all(0.0 <= v <= 100.0 for v in values)
    assert values[-1] > 80  # the bundled model on its own kind of scene


def test_backgrounds_benchmark_refuses_an_unknown_background():
    with pytest.raises(SystemExit) as exc:
        _script().main(["--backgrounds", "neon"])
    assert exc.value.code == 2
