"""ECoFLaP's --smax-delta, `engine` on a build directory, and pruned artifacts that say what they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import NO_ENGINES, needs_no_engines

from mfdeploy.cli import main
from mfdeploy.errors import UserError
from mfdeploy.models import load
from mfdeploy.models.integrity import artifact_records
from mfdeploy.pruning import PruneConfig
from mfdeploy.pruning.methods.ecoflap import allocate_keep, min_keep
from mfdeploy.pruning.run import validate


def run_fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


# ---- item 5: ECoFLaP --smax-delta ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.3])
def test_allocation_at_the_cap_is_every_block_at_the_ratio(sparsity):
    """s_max == sparsity is feasible: 100 * (1 - 0.7) is 30.000000000000004 in floating point, not 31 to keep."""
    keep = allocate_keep([100, 100, 100], [3.0, 1.0, 2.0], sparsity, sparsity)
    assert keep == [round(100 * (1 - sparsity))] * 3


def test_allocation_at_the_cap_with_fractional_shares():
    """Shares that do not divide: the global budget is exact and no block exceeds the cap by a whole weight."""
    sizes = [12288, 12288, 12288, 12288]
    keep = allocate_keep(sizes, [4.0, 3.0, 2.0, 1.0], 0.7, 0.7)
    assert sum(keep) == sum(sizes) - int(0.7 * sum(sizes))
    assert all(n * 0.3 - 1 < k for k, n in zip(keep, sizes))
    with pytest.raises(ValueError, match="below the target"):
        min_keep(sizes, 0.5, 0.4)


@pytest.mark.parametrize("delta", [-0.1, float("nan"), float("-inf")])
def test_negative_smax_delta_fails_before_any_work(tiny_clip_dir, tmp_path, capsys, monkeypatch, delta):
    import mfdeploy.pipelines.prune as run
    import mfdeploy.pruning.methods.ecoflap as ecoflap

    def never(*_a, **_k):
        raise AssertionError("reached the slow steps")

    monkeypatch.setattr(run, "load", never)
    monkeypatch.setattr(ecoflap, "zeroth_order_scores", never)
    err = run_fails(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "ecoflap",
                     "--calib", "shapes", "--smax-delta", str(delta), "--out", str(tmp_path / "e")], capsys)
    assert f"--smax-delta {delta}: must be 0 or more" in err
    assert not (tmp_path / "e").exists()
    with pytest.raises(UserError, match="must be 0 or more"):
        validate(PruneConfig(ratio=0.5, method="ecoflap", ecoflap_smax_delta=delta))


def test_smax_delta_zero_prunes_every_block_at_the_ratio(tiny_clip_dir, tmp_path):
    out = tmp_path / "e"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "ecoflap", "--calib", "shapes",
          "--calib-samples", "8", "--batch-size", "8", "--smax-delta", "0", "--out", str(out)])
    rec = json.loads((out / "prune.json").read_text())
    assert len(rec["block_budgets"]) == 4 and set(rec["block_budgets"].values()) == {0.5}
    adapter = load(out)
    per_block: dict[str, list[int]] = {}
    for layer in adapter.prunable_layers().values():
        w = layer.module.weight
        counts = per_block.setdefault(layer.block, [0, 0])
        counts[0] += int((w == 0).sum())
        counts[1] += w.numel()
    assert {b: z / n for b, (z, n) in per_block.items()} == dict.fromkeys(rec["block_budgets"], 0.5)


def test_smax_delta_zero_with_fractional_shares(tiny_clip_dir, tmp_path):
    """0.4 of a 12288-weight block is 4915.2: every block within one weight of the ratio (the old code refused)."""
    out = tmp_path / "e"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.6", "--method", "ecoflap", "--calib", "shapes",
          "--calib-samples", "8", "--batch-size", "8", "--smax-delta", "0", "--out", str(out)])
    budgets = json.loads((out / "prune.json").read_text())["block_budgets"]
    assert len(budgets) == 4 and all(abs(s - 0.6) * 12288 < 1 for s in budgets.values())


def test_smax_delta_past_one_is_clamped(tiny_clip_dir, tmp_path):
    out = tmp_path / "e"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "ecoflap", "--calib", "shapes",
          "--calib-samples", "8", "--batch-size", "8", "--smax-delta", "5", "--out", str(out)])
    rec = json.loads((out / "prune.json").read_text())
    assert abs(rec["sparsity"]["overall"] - 0.5) < 0.01 and all(s <= 1.0 for s in rec["block_budgets"].values())


# ---- a build directory (the layout `mfdeploy build` writes, without running the whole pipeline) -----------------

@pytest.fixture(scope="module")
def build_dir(tiny_clip_dir, tmp_path_factory) -> Path:
    from mfdeploy.exporting import check_parity, export_towers

    root = tmp_path_factory.mktemp("errs_build") / "b"
    main(["prune", "--model", str(tiny_clip_dir), "--ratio", "0.5", "--method", "magnitude", "--out", str(root)])
    adapter = load(root)
    export_towers(adapter, root / "onnx")
    check_parity(adapter, root / "onnx", n=4, save_inputs=True)
    manifest = {"model": str(tiny_clip_dir), "method": "magnitude", "ratio": 0.5, "pattern": "unstructured",
                "artifacts": artifact_records(root)}
    (root / "build.json").write_text(json.dumps(manifest))
    return root


# ---- item 6: `mfdeploy engine BUILD_DIR` ---------------------------------------------------------------------------

def test_engine_dirs_of_a_build(build_dir, tmp_path):
    from mfdeploy.exporting.engine import engine_dirs

    assert engine_dirs(build_dir) == (build_dir / "onnx", build_dir / "engines")
    assert engine_dirs(build_dir, tmp_path) == (build_dir / "onnx", tmp_path)
    assert engine_dirs(build_dir / "onnx") == (build_dir / "onnx", build_dir / "onnx")


@needs_no_engines
def test_cli_engine_on_build_dir_without_tensorrt(build_dir, capsys):
    main(["engine", str(build_dir), "--max-batch", "4"])
    printed = capsys.readouterr().out
    assert f"TensorRT engines not built: {NO_ENGINES['reason']}" in printed
    # run in the build directory: they read onnx/ and write engines/, where bench and serve look for them
    assert (f"\ncd {build_dir}\nmkdir -p engines\ntrtexec --onnx=onnx/vision.onnx --saveEngine=engines/vision.plan "
            in printed)
    record = json.loads((build_dir / "engines" / "engine.json").read_text())
    assert record["status"] == "skipped" and record["trtexec_cwd"] == str(build_dir)
    shutil.rmtree(build_dir / "engines")


def test_cli_engine_on_build_dir_builds_into_engines(fake_trt, build_dir, capsys):  # noqa: F811
    """With (recorded) TensorRT, the engines go where `bench` reads them: BUILD/engines/."""
    from mfdeploy.runtime.registry import BuildDir

    main(["engine", str(build_dir), "--sparse", "off", "--max-batch", "4"])
    printed = capsys.readouterr().out
    engines = BuildDir(build_dir).engines_dir("pruned")
    assert engines == build_dir / "engines"
    for tower in ("vision", "text"):
        assert f"{tower}: {engines / f'{tower}.plan'}" in printed
        assert (engines / f"{tower}.plan").read_bytes().startswith(b"fake plan")
    assert [Path(p).parent for p, _ in fake_trt["network"]] == [build_dir / "onnx"] * 2
    shutil.rmtree(engines)


def test_cli_engine_refuses_a_changed_onnx_of_a_build(build_dir, tmp_path, capsys):
    copy = Path(shutil.copytree(build_dir, tmp_path / "b"))
    with open(copy / "onnx" / "text.onnx", "ab") as f:
        f.write(b"\0")
    err = run_fails(["engine", str(copy)], capsys)
    assert f"{copy / 'onnx' / 'text.onnx'}: does not match the sha256 in {copy / 'build.json'}" in err
    assert not (copy / "engines").exists()
    shutil.rmtree(copy / "onnx")
    assert "build directory has no onnx/" in run_fails(["engine", str(copy)], capsys)


# ---- item 7: pruned artifacts say what they are ------------------------------------------------------------------

@pytest.mark.parametrize("which", ["prune", "build"])
def test_info_says_pruned(build_dir, tiny_clip_dir, capsys, which):
    target = build_dir if which == "build" else build_dir / "pruned"
    main(["info", str(target)])
    printed = capsys.readouterr().out
    assert f"pruned: magnitude 0.5 unstructured from {tiny_clip_dir}" in printed
    main(["info", str(tiny_clip_dir)])
    assert "pruned:" not in capsys.readouterr().out


def test_eval_title_says_pruned(build_dir, tiny_clip_dir, tmp_path, capsys):
    main(["eval", str(build_dir), "--images", "8", "--pairs", "8", "--no-retention",
          "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    title = f"pruned magnitude 0.5 unstructured from {tiny_clip_dir} (torch)"
    assert "".join(title.split()) in "".join(printed.split())  # rich wraps the title at the table's width
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["pruned"] == {"method": "magnitude", "ratio": 0.5, "pattern": "unstructured"}
    from mfdeploy.cli.render import results_table
    from mfdeploy.eval import evaluate_model

    dense = evaluate_model(tiny_clip_dir, "shapes", n_images=8, n_retrieval=8)
    assert "pruned" not in dense and results_table(dense).title == f"{tiny_clip_dir} (torch)"


def test_onnx_metadata_pruned_and_dense(build_dir, tiny_clip_dir, tmp_path):
    from mfdeploy.exporting import export_towers, onnx_io
    from mfdeploy.pipelines.prune import write_prune_outputs
    from mfdeploy.pruning import prune_model

    for tower in ("vision.onnx", "text.onnx"):
        meta = onnx_io(build_dir / "onnx" / tower)["metadata"]
        assert (meta["pruned"], meta["method"], meta["ratio"], meta["pattern"]) == \
            ("true", "magnitude", "0.5", "unstructured")
        assert meta["model_id"] == str(tiny_clip_dir)
    adapter = load(tiny_clip_dir)
    export_towers(adapter, tmp_path / "dense")
    meta = onnx_io(tmp_path / "dense" / "vision.onnx")["metadata"]
    assert (meta["pruned"], meta["method"], meta["pattern"]) == ("false", "dense", "dense")
    # `build` prunes the loaded model in place and exports it: the export must say pruned too
    record = prune_model(adapter, PruneConfig(ratio=0.5, method="magnitude", pattern="2:4", show_progress=False))
    (tmp_path / "p").mkdir()
    write_prune_outputs(adapter, record, tmp_path / "p")
    export_towers(adapter, tmp_path / "pruned_onnx")
    meta = onnx_io(tmp_path / "pruned_onnx" / "text.onnx")["metadata"]
    assert (meta["pruned"], meta["method"], meta["pattern"]) == ("true", "magnitude", "2:4")
