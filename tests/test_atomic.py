"""Atomic writers (cvat_tools/atomic.py) under exceptions: the old target is untouched and no
temporary file or folder is left beside it; on success the new content replaces it whole."""
from __future__ import annotations

import json

import pytest

from cvat_tools.atomic import atomic_dir, atomic_path, write_json


class Boom(RuntimeError):
    pass


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_publishes_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp_path in tmp.parents and tmp != target  # written beside the target
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert target.read_text() == "new" and _siblings(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("existed", [True, False])
def test_atomic_path_publishes_nothing_on_exception(tmp_path, existed):
    target = tmp_path / "out.txt"
    if existed:
        target.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise Boom()
    if existed:
        assert target.read_text() == "old"
        assert _siblings(tmp_path) == ["out.txt"]  # no temp left
    else:
        assert _siblings(tmp_path) == []  # no target, no temp


def test_atomic_path_exception_before_writing_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(Boom):
        with atomic_path(target):
            raise Boom()
    assert not target.exists() and _siblings(tmp_path / "sub") == []


def test_write_json_failure_keeps_old_file(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        write_json(target, {"v": object()})  # not JSON-serializable
    assert json.loads(target.read_text()) == {"v": 1} and _siblings(tmp_path) == ["a.json"]


def test_atomic_dir_replaces_whole_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old run")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new run")
        assert (target / "stale.txt").exists() and not (target / "new.txt").exists()
    assert _siblings(target) == ["new.txt"] and _siblings(tmp_path) == ["out"]


@pytest.mark.parametrize("existed", [True, False])
def test_atomic_dir_publishes_nothing_on_exception(tmp_path, existed):
    target = tmp_path / "out"
    if existed:
        target.mkdir()
        (target / "old.txt").write_text("old run")
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise Boom()
    if existed:
        assert _siblings(target) == ["old.txt"] and (target / "old.txt").read_text() == "old run"
        assert _siblings(tmp_path) == ["out"]
    else:
        assert _siblings(tmp_path) == []


def test_atomic_dir_without_overwrite_refuses_and_keeps_old(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old run")
    with pytest.raises(FileExistsError):
        with atomic_dir(target, overwrite=False) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _siblings(target) == ["old.txt"] and _siblings(tmp_path) == ["out"]
