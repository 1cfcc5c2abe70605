"""The command line itself: version, help on every subcommand, info."""

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
    assert {"info", "prune", "export", "engine", "build", "eval", "bench"} <= set(COMMANDS)


def test_info_counts(tiny_clip_dir, capsys):
    main(["info", str(tiny_clip_dir)])
    out = capsys.readouterr().out
    assert "prunable layers: 24" in out
    assert "image size: 32x32" in out and "max text length: 48" in out


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "not a CLIP checkpoint"),
])
def test_info_bad_model(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as e:
        main(["info", str(make(tmp_path))])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
