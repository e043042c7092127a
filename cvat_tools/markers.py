"""What marks a folder as this tool's output: the marker file, or (for bundles written before
the marker existed, such as the shipped weights) a manifest whose checksum matches its weights.

:mod:`cvat_tools.atomic` writes markers into every temporary and finished folder and
:mod:`cvat_tools.outdir` reads them before anything is replaced. Both sit below
:mod:`cvat_tools.bundle`, so the bundle's two file names and its checksum live here.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from pathlib import Path

MARKER = ".cvat-tools-output"
_MARKER_MAX_BYTES = 64 * 1024


def _marker_body(command: str | None, temp_for: str | None = None) -> dict:
    from . import __version__

    body = {"command": command, "cvat_tools_version": __version__,
            "pid": os.getpid(), "host": socket.gethostname()}
    if temp_for is not None:
        body["temp_for"] = temp_for
    return body


def write_marker(folder: Path, command: str | None, temp_for: str | None = None) -> None:
    (folder / MARKER).write_text(json.dumps(_marker_body(command, temp_for)) + "\n", encoding="utf-8")


def read_marker(folder: str | Path) -> dict | None:
    """The marker of a folder this tool wrote, or None (absent, a link, unreadable, foreign)."""
    from .errors import InputError
    from .guarded import load_json

    path = Path(folder) / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        body = load_json(path, max_bytes=_MARKER_MAX_BYTES, max_depth=4)
    except (InputError, OSError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("command", ""), (str, type(None))):
        return None
    return body


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process: not ours to judge
    return True


def clean_stale(target: str | Path) -> int:
    """Remove what killed runs left for ``target``; put back an output lost mid-swap.

    Returns how many leftovers were handled."""
    target = Path(target)
    parent = target.parent
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[0-9a-f]+\.(tmp|old)")
    try:
        entries = sorted(os.scandir(parent), key=lambda e: e.name)
    except OSError:
        return 0
    host, done = socket.gethostname(), 0
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
            continue
        path, pid = Path(entry.path), int(match[1])
        marker = read_marker(path)
        if (marker is None or marker.get("pid") != pid or marker.get("host") != host
                or marker.get("temp_for") not in (None, target.name) or _alive(pid)):
            continue
        held = path / "x"
        if match[2] == "old" and (held.exists() or held.is_symlink()) \
                and not (target.exists() or target.is_symlink()):
            os.replace(held, target)  # killed between the two renames: the previous output returns
        shutil.rmtree(path, ignore_errors=True)
        done += 1
    return done


# -- bundles -----------------------------------------------------------------------------------

BUNDLE_WEIGHTS = "weights.pt"
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_FORMAT = "cvat-tools-bundle"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def earlier_bundle(folder: Path, kind: str) -> bool:
    """A bundle of ``kind`` exactly as save_bundle wrote it before bundles had the marker:
    manifest.json + weights.pt only, and the weights match the manifest's checksum."""
    from .errors import InputError
    from .guarded import load_json

    names = {p.name for p in folder.iterdir()}
    if names != {BUNDLE_MANIFEST, BUNDLE_WEIGHTS} or any((folder / n).is_symlink() for n in names):
        return False
    try:
        manifest = load_json(folder / BUNDLE_MANIFEST, max_bytes=16 * 2**20)
    except InputError:
        return False
    return (isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT
            and manifest.get("kind") == kind and isinstance(manifest.get("weights"), dict)
            and manifest["weights"].get("sha256") == sha256_file(folder / BUNDLE_WEIGHTS))
