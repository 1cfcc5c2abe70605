"""Over-long captions (issue 31, item 6): `eval` and calibration say in one line how many were cut.

The tiny model takes 48 tokens; a caption of 100 words is cut to its first 48. The commands run in child
processes: the warning is a logging record, printed on stderr when nothing configured logging (pytest does).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from mfdeploy.data import world

REPO = Path(__file__).resolve().parents[1]
LONG = " ".join(["red"] * 100)


def _pairs(root: Path, captions: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, caption in enumerate(captions):
        world.render(world.make_scene(i)).save(root / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": caption}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root / "pairs.jsonl"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "mfdeploy.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "longer than the model's" in line]


def test_eval_says_how_many_captions_were_cut(tiny_clip_dir, tmp_path):
    pairs = _pairs(tmp_path / "data", ["a red circle.", LONG, LONG + " blue"])
    proc = _cli("eval", str(tiny_clip_dir), "--data", str(pairs))
    assert proc.returncode == 0, proc.stderr
    assert _warnings(proc.stderr) == [f"warning: 2 of 3 prompts and captions of {pairs} are longer than the "
                                      "model's 48 tokens: cut to their first tokens"], proc.stderr
    quiet = _cli("eval", str(tiny_clip_dir), "--data", str(_pairs(tmp_path / "short", ["a red circle.", "star"])))
    assert quiet.returncode == 0 and _warnings(quiet.stderr) == [], quiet.stderr
    assert "Token indices sequence length" not in proc.stderr  # transformers' own warning stays quiet


def test_calibration_says_how_many_captions_were_cut(tiny_clip_dir, tmp_path):
    pairs = _pairs(tmp_path / "data", ["a red circle.", LONG, "star", "a blue square."])
    proc = _cli("prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "wanda", "--calib", str(pairs),
                "--calib-samples", "4", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert _warnings(proc.stderr) == [f"warning: 1 of 4 calibration captions of {pairs} are longer than the model's "
                                      "48 tokens: cut to their first tokens"], proc.stderr


def test_api_calibration_pairs_warn(tiny_adapter, caplog):
    from PIL import Image

    from mfdeploy.models.inputs import calib_from_python

    img = Image.new("RGB", (32, 32))
    with caplog.at_level(logging.WARNING, logger="mfdeploy.models.inputs"):
        calib_from_python(tiny_adapter, [(img, LONG), (img, "star"), (img, LONG)], 3, 32)
        calib_from_python(tiny_adapter, [(img, "star")], 1, 32)
    lines = [r.getMessage() for r in caplog.records if "longer than the model's" in r.getMessage()]
    assert lines == ["warning: 2 of 3 calibration captions are longer than the model's 48 tokens: cut to their "
                     "first tokens"]
