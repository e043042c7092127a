"""The CLI's shell: every listed command imports, user errors are one line and exit 2."""
import subprocess
import sys

import click
import pytest

from cvat_tools import cli


def _walk(group: click.Group, ctx: click.Context, prefix=()):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"{' '.join(prefix + (name,))} is listed but does not load"
        yield prefix + (name,)
        if isinstance(command, click.Group):
            yield from _walk(command, ctx, prefix + (name,))


def test_every_listed_command_loads():
    ctx = click.Context(cli.cli)
    names = {" ".join(n) for n in _walk(cli.cli, ctx)}
    for expected in ("export", "crop", "predict", "classify", "annotate",
                     "train segmenter", "train classifier", "train refiner",
                     "evaluate segmenter", "evaluate classifier", "evaluate refiner"):
        assert expected in names


def test_user_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotations><image name='a.jpg' width='10' height='10'><polygon")
    proc = subprocess.run(
        [sys.executable, "-m", "cvat_tools.cli", "export", str(bad), "--images", str(tmp_path / "images"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "bad.xml" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cvat_tools_error_exit_code(monkeypatch, capsys):
    from cvat_tools.errors import InputError

    @click.command()
    def boom():
        raise InputError("thing.xml: broken; fix it")

    monkeypatch.setitem(cli.cli.lazy, "boom", "x:y")
    monkeypatch.setattr(cli.LazyGroup, "get_command", lambda self, ctx, name: boom)
    with pytest.raises(SystemExit) as exc:
        cli.main(["boom"])
    assert exc.value.code == 2
    assert "error: thing.xml: broken; fix it" in capsys.readouterr().err
