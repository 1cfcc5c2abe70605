"""The command line itself: version, help on every subcommand, info."""

from pathlib import Path

import pytest

from mfdeploy import __version__
from mfdeploy.cli import app, main

COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def exit_code(argv) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_version(capsys):
    assert exit_code(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_subcommand(command, capsys):
    assert exit_code([command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_all_verbs_present():
    assert {"info", "prune", "export", "engine", "build", "eval", "bench", "tune"} <= set(COMMANDS)


def test_info_counts(tiny_clip_dir, capsys):
    main(["info", str(tiny_clip_dir)])
    out = capsys.readouterr().out
    assert "prunable layers: 24" in out
    assert "image size: 32x32" in out and "max text length: 48" in out


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "not a model checkpoint"),
])
def test_info_bad_model(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as e:
        main(["info", str(make(tmp_path))])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


# Every shared prune option, set away from its default, and the PruneConfig field it must reach.
PRUNE_ARGS = {"--model": ("m", "model", "m"), "--method": ("wanda", "method", "wanda"),
              "--budget": ("global", "budget", "global"), "--pattern": ("2:4", "pattern", "2:4"),
              "--calib": ("c.jsonl", "calib", "c.jsonl"), "--calib-samples": ("7", "calib_samples", 7),
              "--batch-size": ("3", "batch_size", 3), "--include": ("*fc1*", "include", ["*fc1*"]),
              "--exclude": ("*fc2*", "exclude", ["*fc2*"]), "--seed": ("5", "seed", 5),
              "--smax-delta": ("0.2", "ecoflap_smax_delta", 0.2), "--neuron-group": ("16", "mope_neuron_group", 16),
              "--depth-share": ("0.25", "mope_depth_share", 0.25), "--distill-steps": ("9", "distill_steps", 9),
              "--mope-cache": ("mc", "mope_cache", Path("mc")),
              "--distill-lr": ("0.002", "distill_lr", 0.002),
              "--distill-params": ("prunable", "distill_params", "prunable"),
              "--device": ("cpu", "device", "cpu"), "--dtype": ("bfloat16", "dtype", "bfloat16")}


@pytest.mark.parametrize("command", ["prune", "build"])
def test_prune_options_reach_the_config(command, tmp_path, monkeypatch):
    """`prune` and `build` share one declaration of the prune options; each value lands in PruneConfig."""
    import mfdeploy.cli as cli_mod

    assert {flag.lstrip("-").replace("-", "_") for flag in PRUNE_ARGS} == set(cli_mod.PRUNE_OPTIONS)
    seen = {}
    if command == "prune":
        import mfdeploy.pipelines.prune as prune_pipeline

        def fake_run_prune(cfg, out, force=False, reporter=None):
            seen.update(cfg=cfg, out=out, force=force)
            return {"sparsity": {"overall": 0.3, "per_modality": {}}, "model": "m", "method": cfg.method,
                    "pattern": cfg.pattern}

        monkeypatch.setattr(prune_pipeline, "run_prune", fake_run_prune)
    else:
        import mfdeploy.pipelines.build as pipeline

        class Stop(Exception):
            pass

        def fake_run_build(cfg, on_stage=None, reporter=None):
            seen.update(cfg=cfg.prune, out=cfg.out, force=cfg.force, fp16=cfg.fp16)
            raise Stop

        monkeypatch.setattr(pipeline, "run_build", fake_run_build)
    argv = [command, "--ratio", "0.3", "--out", str(tmp_path / "o"), "--force"]
    argv += [x for flag, (value, _, _) in PRUNE_ARGS.items() for x in (flag, value)]
    if command == "build":
        argv.append("--fp16")
        with pytest.raises(Stop):
            main(argv)
        assert seen["fp16"] is True
    else:
        main(argv)
    cfg = seen["cfg"]
    assert cfg.ratio == 0.3 and seen["out"] == tmp_path / "o" and seen["force"] is True
    for flag, (_, field, expected) in PRUNE_ARGS.items():
        assert getattr(cfg, field) == expected, flag
