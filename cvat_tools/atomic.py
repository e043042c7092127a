"""Outputs appear whole or not at all: write beside the target, then rename.

Every temporary folder is named ``.<target>.<pid>.<hex>.tmp`` (or ``.old`` while a swap is
under way) and holds a marker file (:data:`MARKER`) naming its process and host. A run killed
half-way leaves such folders behind; the next run writing the same target removes them, and
only them: matching name, our marker, a process that is gone. A run killed between the two
renames of a swap left the previous output in ``.old/x``: the next run puts it back.

Folders are made with mode 0o777 and files with 0o666, so the user's umask decides (the
``tempfile`` functions would make them private, 0700/0600, whatever the umask says).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from .markers import MARKER, clean_stale, write_marker


def _new_dir(parent: Path, name: str, kind: str) -> Path:
    while True:
        path = parent / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"
        try:
            os.mkdir(path, 0o777)  # the umask applies (mkdtemp would force 0700)
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; it replaces ``target`` on success.

    The file exists (empty) and has ``target``'s name, inside a private temporary folder."""
    from .errors import InputError

    target = Path(target)
    if target.is_dir() and not target.is_symlink():
        raise InputError(f"{target}: is a folder; give a file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    folder = _new_dir(target.parent, target.name, "tmp")
    try:
        write_marker(folder, None, temp_for=target.name)
        tmp_path = folder / target.name
        tmp_path.open("x").close()
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = True, command: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; it becomes ``target`` on success.

    An existing ``target`` is replaced only after the new one is complete. With ``command``
    (a CLI output folder) the result carries the marker naming it, and ``target`` is replaced
    only when :func:`cvat_tools.outdir.check_out` allows it (checked on entry and again just
    before the swap)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    if command is not None:
        from .outdir import check_out
        check_out(target, command)
    tmp = _new_dir(target.parent, target.name, "tmp")
    try:
        write_marker(tmp, command, temp_for=target.name)
        yield tmp
        if command is None:
            (tmp / MARKER).unlink(missing_ok=True)
        else:
            write_marker(tmp, command)  # the output's own marker: no temp_for, never cleaned
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{target} exists; remove it or choose another --out")
            if command is not None:
                check_out(target, command)
            _swap(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap(new: Path, target: Path) -> None:
    from .errors import CvatToolsError

    old = _new_dir(target.parent, target.name, "old")
    write_marker(old, None, temp_for=target.name)
    try:
        os.replace(target, old / "x")
    except OSError as exc:
        shutil.rmtree(old, ignore_errors=True)
        raise CvatToolsError(f"{target}: cannot be replaced ({exc.strerror or exc}); it was left as it was") from None
    try:
        os.replace(new, target)
    except OSError as exc:
        os.replace(old / "x", target)
        shutil.rmtree(old, ignore_errors=True)
        raise CvatToolsError(f"{target}: cannot be replaced ({exc.strerror or exc}); it was left as it was") from None
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (UTF-8)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        text = json.dumps(obj, indent=indent)
        tmp.write_text(text + "\n" if indent else text, encoding="utf-8")
    return path
