"""Faults a new user hit (a ninth round, C): outputs that land on the command's own inputs, kills and full disks
on the paths less travelled."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import one_error, run_cli

BENCH = ["--backends", "ort-cpu", "--towers", "text", "--batch-sizes", "1", "--warmup", "0", "--iters", "1",
         "--min-time", "0", "--no-dense"]


@pytest.mark.parametrize("target", ["build.json", "onnx/text.onnx", "bench.md", "pruned/config.json"])
def test_bench_json_naming_a_file_of_the_build_is_refused_and_the_build_left_whole(tiny_build, tmp_path, capsys,
                                                                                 target):
    """`bench BUILD --json BUILD/build.json` wrote the rows over the build's manifest: every later command then
    called the build unreadable. A file of the build (or a report bench writes there) is refused before timing."""
    build = tmp_path / "b"
    shutil.copytree(tiny_build, build)
    before = (build / target).read_bytes() if (build / target).exists() else None
    assert run_cli(["bench", str(build), *BENCH, "--json", str(build / target)]) == 2
    line = one_error(capsys)
    assert f"--json {build / target} would replace {target} of {build}" in line, line
    after = (build / target).read_bytes() if (build / target).exists() else None
    assert after == before
    assert not (build / "bench.json").exists()  # refused before any timing or report


def test_bench_json_of_the_users_own_inside_the_build_is_still_written(tiny_build, tmp_path, capsys):
    build = tmp_path / "b"
    shutil.copytree(tiny_build, build)
    assert run_cli(["bench", str(build), *BENCH, "--json", str(build / "rows.json")]) == 0
    assert (build / "rows.json").is_file() and (build / "bench.json").is_file()


def test_eval_json_naming_its_model_or_data_is_refused(tiny_build, shapes_pairs_jsonl, tmp_path, capsys):
    """`eval BUILD --json BUILD/report.md` (or the --data file, or a checkpoint's config.json) overwrote an input."""
    build = tmp_path / "b"
    shutil.copytree(tiny_build, build)
    report = (build / "report.md").read_bytes()
    assert run_cli(["eval", str(build), "--images", "8", "--pairs", "8", "--json", str(build / "report.md")]) == 2
    assert "would replace report.md of" in one_error(capsys)
    assert (build / "report.md").read_bytes() == report
    data = tmp_path / "pairs.jsonl"
    shutil.copy(shapes_pairs_jsonl, data)
    text = data.read_bytes()
    assert run_cli(["eval", str(build / "pruned"), "--data", str(data), "--json", str(data)]) == 2
    assert f"would replace {data}, which this command reads" in one_error(capsys)
    assert data.read_bytes() == text
    config = build / "pruned" / "config.json"
    for target in (config, build / "pruned" / "eval.json"):  # a checkpoint: any file in it may be one it reads
        assert run_cli(["eval", str(build / "pruned"), "--images", "8", "--pairs", "8", "--json", str(target)]) == 2
        assert f"--json {target} is inside {build / 'pruned'}, which this command reads" in one_error(capsys)
    assert Path(config).read_bytes() == (tiny_build / "pruned" / "config.json").read_bytes()
    assert not (build / "pruned" / "eval.json").exists()


@pytest.mark.parametrize("verb", ["prune", "build"])
@pytest.mark.parametrize("cache", [".", "cache"])
def test_a_mope_cache_inside_out_is_refused_before_any_work(tiny_clip_dir, tmp_path, capsys, monkeypatch, verb,
                                                            cache):
    """`prune --method mope --mope-cache X --out X` scored every module, filling X with the cache, then failed:
    "X already exists: pass --force" (and with --force: "holds files mfdeploy did not write")."""
    import mfdeploy.pipelines.prune as prune_pipeline

    def no_load(_cfg):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(prune_pipeline, "load_placed", no_load)
    out = tmp_path / "out"
    argv = [verb, "--model", str(tiny_clip_dir), "--method", "mope", "--ratio", "0.5", "--calib", "shapes",
            "--calib-samples", "8", "--mope-cache", str(out / cache), "--out", str(out)]
    assert run_cli(argv) == 2
    line = one_error(capsys)
    assert f"--mope-cache {out / cache}: inside --out {out}" in line, line
    assert not out.exists()


def test_a_mope_cache_beside_out_is_taken(tmp_path):
    from mfdeploy.pruning.checks import check_cache_outside
    from mfdeploy.pruning.config import PruneConfig

    check_cache_outside(PruneConfig(ratio=0.5, method="mope", mope_cache=tmp_path / "cache"), tmp_path / "out")
    # out inside the cache is fine: the cache only adds its own files
    check_cache_outside(PruneConfig(ratio=0.5, method="mope", mope_cache=tmp_path), tmp_path / "out")


@pytest.mark.parametrize("damage", [{"backend_asked": None}, {"batch_size": None}, {"eval": None}])
def test_tune_pick_on_settings_missing_an_entry_is_one_line(tmp_path, capsys, damage):
    """`tune DIR --pick N` with a tune_settings.json missing "backend_asked" (or "batch_size", "eval") ended in a
    KeyError traceback: only the space was read inside the check."""
    import json

    from mfdeploy.tuning.space import load_space

    settings = {"model": None, "backend": "ort-cpu", "backend_asked": "ort-cpu", "batch_size": 8, "eval": "shapes",
                "space_spec": "quick", "space_lists": load_space("quick", "ort-cpu").describe()}
    for key in damage:
        del settings[key]
    out = tmp_path / "tune"
    out.mkdir()
    (out / "tune_settings.json").write_text(json.dumps(settings))
    assert run_cli(["tune", str(out), "--pick", "0"]) == 2
    line = one_error(capsys)
    assert f"tune_settings.json: unreadable (no '{next(iter(damage))}' entry)" in line, line


@pytest.mark.parametrize("points_to", ["a folder", "nothing"])
def test_out_on_a_symbolic_link_says_so_without_suggesting_force(tmp_path, capsys, points_to):
    """`quantize BUILD --out LINK` said "LINK already exists: pass --force", and with --force: "--force will not
    replace LINK: it is a symbolic link" (a dangling link too): the first message sent the user to a refusal."""
    from mfdeploy.artifacts.io import check_out_dir
    from mfdeploy.errors import UserError

    target = tmp_path / "real"
    if points_to == "a folder":
        target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    for force in (False, True):
        with pytest.raises(UserError) as e:
            check_out_dir(link, force=force)
        assert str(e.value) == f"{link} is a symbolic link: mfdeploy never writes through one nor replaces it; " \
                               "choose another --out"
    assert link.is_symlink() and target.exists() == (points_to == "a folder")


def test_quantizing_a_quantize_output_again_names_the_fp32_source(tiny_clip_dir, tmp_path, capsys):
    """`quantize Q --out Q2` on the output of `quantize EXPORT --out Q` said "Q/vision.onnx: no weight node to
    quantize" (its weights are int8 already); a build's quantize output asked for an export.json instead."""
    export, q = tmp_path / "export", tmp_path / "q"
    assert run_cli(["export", str(tiny_clip_dir), "--out", str(export)]) == 0
    assert run_cli(["quantize", str(export), "--scheme", "dynamic", "--out", str(q)]) == 0
    capsys.readouterr()
    for scheme in ("dynamic", "static"):
        assert run_cli(["quantize", str(q), "--scheme", scheme, "--out", str(tmp_path / "q2")]) == 2
        line = one_error(capsys)
        assert line == f"error: {q}: its towers are quantized already (quantize.json): quantize the fp32 towers " \
                       f"they came from, {export.resolve()}", line
        assert not (tmp_path / "q2").exists()


def _stale_temp(parent: Path, name: str) -> Path:
    """A temporary folder as a run killed with SIGKILL leaves it: its owner record names a process long gone."""
    import json
    import socket

    folder = parent / name
    folder.mkdir()
    (folder / ".mfdeploy-owner").write_text(json.dumps({"tool": "mfdeploy", "host": socket.gethostname(),
                                                         "pid": 2**22 + 7, "start": 1, "dir": name}))
    (folder / "bench.json").write_text("[]")
    return folder


def test_a_killed_bench_inside_a_build_does_not_block_force_or_in_place(tiny_build, tmp_path, capsys):
    """`bench BUILD` killed while writing its report left `BUILD/.bench.tmp-XXXX`; `build --force --out BUILD`
    and `quantize BUILD --in-place` then refused: "it holds files mfdeploy did not write
    (.bench.tmp-XXXX/.mfdeploy-owner, ...)". Only the folders beside --out were swept, not those inside it."""
    from mfdeploy.artifacts.io import check_out_dir, foreign_files

    build = tmp_path / "b"
    shutil.copytree(tiny_build, build)
    stale = _stale_temp(build, ".bench.tmp-k1ll3d00")
    engines = build / "engines"
    engines.mkdir()
    stale_engine = _stale_temp(engines, ".vision.plan.tmp-k1ll3d00")
    check_out_dir(build, force=True)
    assert not stale.exists() and not stale_engine.exists()
    assert foreign_files(build) == []
    live = build / ".bench.tmp-l1ve0000"  # a folder without a dead owner's record is the user's: still named
    live.mkdir()
    (live / "x").write_text("x")
    assert foreign_files(build) == [".bench.tmp-l1ve0000/x"]


def test_an_export_of_a_relative_model_path_is_quantized_from_another_folder(tiny_clip_dir, tmp_path, capsys,
                                                                              monkeypatch):
    """`mfdeploy export ckpt --out e` recorded "source": "ckpt" in export.json; `quantize e` (and `serve e`) run
    from another folder read it as a hub id: "cannot load the config of ckpt: the Hugging Face hub cannot be
    reached"."""
    import json

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_clip_dir, work / "ckpt")
    monkeypatch.chdir(work)
    assert run_cli(["export", "ckpt", "--out", "e"]) == 0
    assert json.loads((work / "e" / "export.json").read_text())["model"]["source"] == str(work / "ckpt")
    monkeypatch.chdir(tmp_path)
    assert run_cli(["quantize", str(work / "e"), "--scheme", "dynamic", "--out", "q"]) == 0
    assert (tmp_path / "q" / "vision.onnx").is_file()


def test_tune_out_on_a_dangling_symbolic_link_says_so(tmp_path, capsys):
    """`tune --out LINK`, LINK pointing nowhere, ended in "cannot write LINK/trials.jsonl: No such file or
    directory": mkdir found the link there and let it pass."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone" / "tune")
    assert run_cli(["tune", "--space", "quick", "--out", str(link), "--time-budget", "1"]) == 2
    line = one_error(capsys)
    assert line == f"error: --out {link}: a symbolic link to {tmp_path / 'gone' / 'tune'}, which does not exist; " \
                   "choose another --out", line
    assert link.is_symlink() and not (tmp_path / "gone").exists()
