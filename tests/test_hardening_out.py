"""Issue 19, output folders and checkpoints: nothing of the user's is replaced, killed runs
leave nothing behind for long, outputs follow the umask, checkpoints cannot run code, and
--resume / --device mistakes are one line before any work."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli_run import run_cli
from cvat_tools.atomic import atomic_dir, atomic_path
from cvat_tools.markers import MARKER, clean_stale
from cvat_tools.errors import InputError
from cvat_tools.outdir import check_out

REPO = Path(__file__).resolve().parents[1]
USER_BYTES = b"the user's own work\x00\xff"


def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_bytes(USER_BYTES)
    return path


def _one_line_error(code: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in err


def _tiny_png(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(path)
    return path


def _fake_bundle(path: Path) -> Path:
    """A bundle folder as save_bundle wrote it before bundles carried the marker."""
    import hashlib
    import json

    path.mkdir()
    (path / "weights.pt").write_bytes(b"not really weights")
    sha = hashlib.sha256(b"not really weights").hexdigest()
    (path / "manifest.json").write_text(json.dumps({
        "format": "cvat-tools-bundle", "format_version": 1, "kind": "classifier",
        "labels": ["neutrophil"], "weights": {"file": "weights.pt", "sha256": sha}}))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- every command that writes a folder refuses a folder it did not write -----------------

def _commands(tmp: Path, out: Path) -> dict[str, list]:
    images = tmp / "in"
    _tiny_png(images / "neutrophil" / "a.png")
    ann = tmp / "a.xml"
    ann.write_text("<annotations/>")
    return {
        "crop": ["crop", images, "--out", out],
        "predict": ["predict", images / "neutrophil" / "a.png", "--out", out],
        "export": ["export", ann, "--images", images, "--out", out],
        "convert": ["convert", ann, "--to", "coco", "--out", out],
        "train classifier": ["train", "classifier", "--data", images, "--out", out],
        "train segmenter": ["train", "segmenter", "--data", images, "--out", out],
        "train refiner": ["train", "refiner", "--source", images, "--target", images, "--out", out],
        "evaluate segmenter": ["evaluate", "segmenter", "--data", images, "--overlays", out],
    }


COMMANDS = ["crop", "predict", "export", "convert", "train classifier", "train segmenter", "train refiner",
            "evaluate segmenter"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_users_folder_is_refused_untouched(tmp_path, command):
    out = _user_folder(tmp_path / "mine")
    code, _, err = run_cli(*_commands(tmp_path, out)[command])
    _one_line_error(code, err, str(out), "not written by", "nothing was changed")
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert (out / "notes.txt").read_bytes() == USER_BYTES
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine.")]


@pytest.mark.parametrize("command", ["export", "crop", "train segmenter"])
def test_a_bundle_is_not_an_output_of_another_command(tmp_path, command):
    """export/crop/train segmenter --out a classifier bundle: its weights stay."""
    out = _fake_bundle(tmp_path / "bundle")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(*_commands(tmp_path, out)[command])
    _one_line_error(code, err, str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_earlier_bundle_of_the_same_kind_may_be_replaced(tmp_path):
    check_out(_fake_bundle(tmp_path / "b"), "train classifier")  # no error
    (tmp_path / "b" / "extra.txt").write_text("user")
    with pytest.raises(InputError, match="not written by"):
        check_out(tmp_path / "b", "train classifier")


def test_an_output_of_another_command_is_refused(tmp_path):
    with atomic_dir(tmp_path / "out", command="crop") as tmp:
        (tmp / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="output of 'cvat-tools crop'"):
        check_out(tmp_path / "out", "predict")
    check_out(tmp_path / "out", "crop")
    check_out(tmp_path / "new", "crop")
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", "crop")


def test_a_file_or_link_as_out_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(USER_BYTES)
    with pytest.raises(InputError, match="is a file"):
        check_out(tmp_path / "f", "crop")
    with atomic_dir(tmp_path / "real", command="crop"):
        pass
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(InputError, match="symbolic link"):
        check_out(tmp_path / "link", "crop")


def test_an_out_holding_an_input_is_refused(tmp_path):
    with atomic_dir(tmp_path / "out", command="predict") as tmp:
        _tiny_png(tmp / "later.png")
    code, _, err = run_cli("predict", tmp_path / "out" / "later.png", "--out", tmp_path / "out")
    _one_line_error(code, err, "holds the input")
    assert (tmp_path / "out" / "later.png").is_file()


def test_training_data_inside_out_is_refused(tmp_path):
    out = _fake_bundle(tmp_path / "b")
    check_out(out, "train classifier")
    _tiny_png(out / "crops" / "neutrophil" / "a.png")
    (out / MARKER).write_text('{"command": "train classifier"}')
    code, _, err = run_cli("train", "classifier", "--data", out / "crops", "--out", out)
    _one_line_error(code, err, "holds the input")
    assert (out / "crops" / "neutrophil" / "a.png").is_file()


def test_rerunning_into_its_own_output_replaces_it_whole(tmp_path):
    out = tmp_path / "out"
    for name in ("first", "second"):
        with atomic_dir(out, command="crop") as tmp:
            (tmp / name).write_text(name)
    assert sorted(os.listdir(out)) == [MARKER, "second"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_classify_out_a_folder_or_a_foreign_file_is_refused_before_any_work(tmp_path):
    image = _tiny_png(tmp_path / "a.png")
    folder = _user_folder(tmp_path / "folder")
    code, _, err = run_cli("classify", image, "--out", folder, "--bundle", tmp_path / "no-such-bundle")
    _one_line_error(code, err, "is a folder")
    foreign = tmp_path / "data.csv"
    foreign.write_bytes(USER_BYTES)
    code, _, err = run_cli("classify", image, "--out", foreign, "--bundle", tmp_path / "no-such-bundle")
    _one_line_error(code, err, "not a CSV written by")
    assert foreign.read_bytes() == USER_BYTES and (folder / "notes.txt").read_bytes() == USER_BYTES


# --- exceptions, kills and leftovers ----------------------------------------------------------

def test_an_exception_inside_leaves_no_temp_and_the_old_output(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, command="crop") as tmp:
        (tmp / "old").write_bytes(USER_BYTES)
    with pytest.raises(RuntimeError):
        with atomic_dir(out, command="crop") as tmp:
            (tmp / "new").write_text("half")
            raise RuntimeError("boom")
    (tmp_path / "f.csv").write_bytes(USER_BYTES)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "f.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["f.csv", "out"]
    assert (tmp_path / "f.csv").read_bytes() == USER_BYTES
    assert sorted(os.listdir(out)) == [MARKER, "old"] and (out / "old").read_bytes() == USER_BYTES


def _killed_run(tmp_path: Path, between_renames: bool) -> None:
    """A process that writes tmp_path/out and is SIGKILLed: while writing, or mid-swap."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        import cvat_tools.atomic as A
        out = Path({str(tmp_path / "out")!r})
        real = os.replace
        def replace(src, dst):
            if {between_renames!r} and str(src).endswith(".tmp") and Path(dst) == out:
                os.kill(os.getpid(), signal.SIGKILL)  # the previous output is in .old/x now
            return real(src, dst)
        A.os.replace = replace
        with A.atomic_dir(out, command="crop") as tmp:
            (tmp / "big").write_bytes(b"0" * 100000)
            if not {between_renames!r}:
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()


def test_a_killed_run_leaves_a_temp_that_the_next_run_removes(tmp_path):
    _killed_run(tmp_path, between_renames=False)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.") and left[0].endswith(".tmp")
    # look-alikes that are not stale leftovers of ours are kept
    foreign = tmp_path / f".out.{_dead_pid()}.abcd.tmp"
    foreign.mkdir()
    (foreign / "keep").write_bytes(USER_BYTES)
    live = tmp_path / f".out.{os.getpid()}.beef.tmp"
    live.mkdir()
    (live / MARKER).write_text(f'{{"command": null, "pid": {os.getpid()}, "host": "{os.uname().nodename}", '
                               '"temp_for": "out"}')
    with atomic_dir(tmp_path / "out", command="crop") as tmp:
        (tmp / "new").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", foreign.name, live.name])
    assert (foreign / "keep").read_bytes() == USER_BYTES


def test_a_kill_between_the_two_renames_gives_the_output_back(tmp_path):
    with atomic_dir(tmp_path / "out", command="crop") as tmp:
        (tmp / "previous").write_bytes(USER_BYTES)
    _killed_run(tmp_path, between_renames=True)
    assert not (tmp_path / "out").exists()  # the state a kill there leaves
    assert clean_stale(tmp_path / "out") == 2  # the .old (restored) and the complete .tmp
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert (tmp_path / "out" / "previous").read_bytes() == USER_BYTES


@pytest.mark.parametrize("umask, folder, file", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600),
                                                  (0o002, 0o775, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, folder, file):
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "out", command="crop") as tmp:
            (tmp / "a.txt").write_text("a")
        with atomic_path(tmp_path / "f.csv") as tmp:
            tmp.write_text("b")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == folder
    assert (tmp_path / "out" / "a.txt").stat().st_mode & 0o777 == file
    assert (tmp_path / "f.csv").stat().st_mode & 0o777 == file


# --- checkpoints -------------------------------------------------------------------------------

class _Planted:
    """What an attacker would plant: unpickling it creates a file."""

    def __init__(self, flag: str):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


def test_a_planted_pickle_is_refused_and_not_run(tmp_path):
    import torch

    from cvat_tools.train.checkpoint import load_checkpoint

    flag = tmp_path / "ran"
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "labels": ["a"], "size": 32, "x": _Planted(str(flag))}, path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert "refused" in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not flag.exists()


def test_a_checkpoint_round_trips_without_pickled_objects(tmp_path):
    import numpy as np
    import torch

    from cvat_tools.train.engine import Progress, Run, fit, restore

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = Run("train classifier", tmp_path / "b", tmp_path / "b.ckpt", resume=False)
    progress = Progress()

    def train_epoch(epoch):
        model(torch.ones(4, 3)).sum().backward()
        optimizer.step()
        progress.step += 1
        return {"loss": np.float32(0.25), "path": tmp_path}

    fit(run, model, optimizer, progress, 1, train_epoch, lambda e: (np.float64(0.5), {"f1": np.float64(0.5)}),
        {"labels": ["a"], "size": 32})
    fresh_model, fresh = torch.nn.Linear(3, 2), torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    run.resume = True
    back = restore(run, fresh_model, fresh, {"labels": ["a"], "size": 32})
    assert back.best["score"] == 0.5 and back.history[0]["loss"] == 0.25 and back.epoch == 1 and back.step == 1
    assert torch.equal(fresh_model.weight, model.weight)
    assert fresh.state_dict()["state"][0]["step"] == 1
    with pytest.raises(InputError, match="other labels"):
        restore(run, fresh_model, fresh, {"labels": ["b"], "size": 32})


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    from cvat_tools.train.checkpoint import load_checkpoint

    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError) as info:
        load_checkpoint(tmp_path / "last.pt")
    assert len(str(info.value).splitlines()) == 1 and "cannot resume" in str(info.value)


@pytest.mark.parametrize("command, work", [("train classifier", "b.ckpt"), ("train segmenter", "b.ckpt")])
def test_resume_without_a_checkpoint_is_an_error(tmp_path, command, work):
    images = tmp_path / "in"
    _tiny_png(images / "neutrophil" / "a.png")
    code, _, err = run_cli(*command.split(), "--data", images, "--out", tmp_path / "b", "--resume")
    _one_line_error(code, err, "--resume", str(tmp_path / work / "last.pt"))


def test_a_foreign_work_folder_is_refused(tmp_path):
    _user_folder(tmp_path / "b.ckpt")
    code, _, err = run_cli("train", "classifier", "--data", tmp_path, "--out", tmp_path / "b")
    _one_line_error(code, err, "b.ckpt", "nothing was changed")
    assert sorted(os.listdir(tmp_path / "b.ckpt")) == ["notes.txt"]


def test_resume_from_a_run_folder_of_the_old_name_says_what_to_rename(tmp_path):
    (tmp_path / "b.work").mkdir()
    (tmp_path / "b.work" / "last.pt").write_bytes(b"old")
    code, _, err = run_cli("train", "classifier", "--data", tmp_path, "--out", tmp_path / "b", "--resume")
    _one_line_error(code, err, "rename", str(tmp_path / "b.work"), str(tmp_path / "b.ckpt"))
    assert not (tmp_path / "b.ckpt").exists()


# --- devices -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["predict", "x.png", "--out", "o"], ["annotate", "--host", "http://127.0.0.1:9", "--task", "1"],
                                  ["train", "classifier", "--out", "o"], ["train", "segmenter", "--data", ".",
                                                                          "--out", "o"]])
def test_an_unknown_device_is_one_line(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(*args, "--device", "gpu")
    _one_line_error(code, err, "--device gpu", "cpu, cuda or cuda:N")
    assert os.listdir(tmp_path) == []


def test_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    code, _, err = run_cli("predict", "x.png", "--out", "o", "--device", "cuda")
    _one_line_error(code, err, "no CUDA device")


def test_valid_devices_pass():
    from cvat_tools.devices import validate_device

    assert validate_device("CPU") == "cpu" and validate_device(None) is None
    for bad in ("cuda:", "cuda:x", "gpu", "cpu:0", "mps"):
        with pytest.raises(InputError):
            validate_device(bad)


def test_cuda_index_is_checked_against_the_visible_gpus(monkeypatch):
    import torch

    from cvat_tools.devices import validate_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert validate_device("cuda") == "cuda" and validate_device("cuda:0") == "cuda:0"
    with pytest.raises(InputError, match="only 1 CUDA device"):
        validate_device("cuda:1")
