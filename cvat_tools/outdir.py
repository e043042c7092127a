"""The one ``--out`` policy of every command that writes a folder.

``--out`` must be a new folder, an empty one, or a folder the same command wrote earlier
(it carries :data:`cvat_tools.markers.MARKER` naming the command); only then is it replaced,
whole, once the new output is complete. Anything else is refused up front, before any work,
so a typo in ``--out`` never costs the user a folder. Bundles written before the marker
existed (the shipped weights) are recognised by their manifest and checksum instead.
"""
from __future__ import annotations

from pathlib import Path

from .markers import MARKER, clean_stale, earlier_bundle, read_marker
from .errors import InputError


def check_out(out: str | Path, command: str, flag: str = "--out", inputs=()) -> None:
    """Raise InputError unless ``command`` may write (or replace) the folder ``out``.

    ``inputs`` (files or folders the command reads) must not lie inside ``out``: replacing it
    would delete them. Also removes what killed earlier runs into ``out`` left behind (see
    markers.clean_stale)."""
    out = Path(out)
    keep = "nothing was changed"
    resolved = out.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source == resolved or resolved in source.parents:
            raise InputError(f"{flag} {out}: holds the input {source}; choose a folder outside it ({keep})")
    clean_stale(out)
    if out.is_symlink():
        raise InputError(f"{flag} {out}: is a symbolic link; give the real folder ({keep})")
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{flag} {out}: is a file; choose a folder ({keep})")
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise InputError(f"{flag} {out}: cannot be read ({exc.strerror or exc}); choose another folder") from None
    if empty:
        return
    marker = read_marker(out)
    if marker is not None and marker.get("command"):
        if marker["command"] == command:
            return
        raise InputError(f"{flag} {out}: holds the output of 'cvat-tools {marker['command']}', not of "
                         f"'cvat-tools {command}'; choose another folder ({keep})")
    if command.startswith("train ") and earlier_bundle(out, command.split()[1]):
        return
    raise InputError(f"{flag} {out}: exists and was not written by 'cvat-tools {command}' (no {MARKER} "
                     f"file in it); choose a new folder, or empty this one yourself ({keep})")


def check_out_file(out: str | Path, header: str, what: str, flag: str = "--out") -> None:
    """A file output (a CSV): refuse a folder, and an existing file that does not start with
    the ``header`` line this tool writes (someone else's file, not ours to replace)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{flag} {out}: is a folder; give a file name such as {out / 'out.csv'}")
    if out.exists():
        try:
            with open(out, "rb") as fh:
                first = fh.readline(len(header) + 2)
        except OSError as exc:
            raise InputError(f"{flag} {out}: cannot be read ({exc.strerror or exc})") from None
        if first.rstrip(b"\r\n") != header.encode():
            raise InputError(f"{flag} {out}: exists and is not {what}; choose a new file name "
                             "(nothing was changed)")


def check_out_with_record(out: str | Path, record: str | Path, command: str, suffix: str = ".png",
                          flag: str = "--out") -> None:
    """A file output (a plot) written with a JSON record beside it that names ``command``:
    refuse a folder, another suffix, and any existing file unless that record is ours."""
    from .guarded import load_json

    out, record = Path(out), Path(record)
    keep = "nothing was changed"
    if out.suffix.lower() != suffix:
        raise InputError(f"{flag} {out}: give a {suffix} file name, such as {out.with_suffix(suffix).name}")
    if out.is_dir() or record.is_dir():
        raise InputError(f"{flag} {out}: {out if out.is_dir() else record} is a folder; give a new file name ({keep})")
    if not (out.exists() or record.exists()):
        return
    ours = False
    if record.is_file() and not record.is_symlink():
        try:
            body = load_json(record, max_bytes=16 * 2**20)
            ours = isinstance(body, dict) and body.get("command") == f"cvat-tools {command}"
        except InputError:
            ours = False
    if not ours or out.is_symlink():
        raise InputError(f"{flag} {out}: {out.name} or {record.name} exists and was not written by "
                         f"'cvat-tools {command}'; choose a new file name ({keep})")
