"""Names taken from input files (image names, labels) turned into paths that cannot escape.

An annotation file names its images (``<image name=...>``, COCO ``file_name``, thesis
``filename``); a hostile or careless file may name ``/etc/x/a.jpg``, ``../../a.jpg``,
``C:\\data\\a.jpg`` or put a NUL in it. Every file the tool writes or reads because an input
file named it goes through here, so there is one rule:

* sanitised (kept usable): backslashes become ``/``, a drive letter (``C:``), leading ``/``,
  empty and ``.`` parts are dropped, ``a/../b`` is folded to ``b`` and ``..`` that would climb
  above the start is dropped. The result is a relative path of plain parts, so a name as CVAT
  or a Windows tool writes it still finds its image by its tail.
* refused (InputError): NUL or other control characters, text that is not valid Unicode
  (lone surrogates from JSON escapes), and names with no part left (``/``, ``..``).

:func:`join_inside` then joins such a path under a root and checks, after resolving links,
that the result is still inside the root.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
from pathlib import Path, PurePosixPath

from ..errors import InputError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
# Linux refuses names over 255 bytes; leave room for "_<k>.png" suffixes.
MAX_COMPONENT_BYTES = 200


def shown(value: object, limit: int = 80) -> str:
    """A value read from an input file, for an error line: its repr, cut to ``limit`` chars
    (an error must stay one short line however long the hostile value is)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def safe_relative(name: str, what: str = "image name") -> PurePosixPath:
    """A relative path of plain parts for a name read from an input file (see module doc)."""
    if not isinstance(name, str):
        raise InputError(f"{what} {shown(str(name))} is not text")
    if _CONTROL.search(name):
        raise InputError(f"{what} {shown(name)} contains control characters (NUL, newline ...); refused")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} {shown(name)} is not valid Unicode; refused") from None
    text = _DRIVE.sub("", name.replace("\\", "/"))
    # lexical folding first ("a/../b" -> "b"), then whatever still climbs is dropped
    folded = posixpath.normpath("/" + text).lstrip("/")
    parts = [p for p in folded.split("/") if p not in ("", ".", "..")]
    if not parts:
        raise InputError(f"{what} {shown(name)} names no file; refused")
    return PurePosixPath(*parts)


def safe_component(name: str, what: str = "name") -> str:
    """One file-name part (no '/') for a name read from an input file, at most
    :data:`MAX_COMPONENT_BYTES` bytes (longer names keep their start and a hash)."""
    flat = "__".join(safe_relative(name, what).parts)
    return _fit(flat)


def _fit(part: str) -> str:
    raw = part.encode("utf-8")
    if len(raw) <= MAX_COMPONENT_BYTES:
        return part
    digest = hashlib.sha1(raw).hexdigest()[:12]
    suffix = PurePosixPath(part).suffix
    suffix = suffix if len(suffix.encode("utf-8")) <= 16 else ""
    keep = MAX_COMPONENT_BYTES - len(digest) - len(suffix.encode("utf-8")) - 1
    head = raw[:keep].decode("utf-8", errors="ignore")
    return f"{head}~{digest}{suffix}"


def unique_file_names(names: list[str], what: str = "image name") -> list[str]:
    """One flat, safe file name per input name, with pairwise different stems.

    The base name when it is unique (stems compared case-insensitively, so ``a.jpg`` and
    ``A.png`` do not share ``masks/a_0.png`` on any file system), else the whole relative path
    joined by ``__``, else that with ``~n`` added.
    """
    rels = [safe_relative(n, what) for n in names]
    base = [_fit(r.name) for r in rels]
    stems = [PurePosixPath(b).stem.lower() for b in base]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    out = [b if counts[s] == 1 else _fit("__".join(r.parts)) for r, b, s in zip(rels, base, stems)]
    taken: set[str] = set()
    for i, candidate in enumerate(out):
        stem, suffix = PurePosixPath(candidate).stem, PurePosixPath(candidate).suffix
        k = 1
        while PurePosixPath(candidate).stem.lower() in taken:
            candidate = _fit(f"{stem}~{k}{suffix}")
            k += 1
        taken.add(PurePosixPath(candidate).stem.lower())
        out[i] = candidate
    return out


def join_inside(root: str | Path, name: str, what: str = "image name") -> Path:
    """``root / safe_relative(name)``, refused when links would lead it outside ``root``."""
    root = Path(root)
    path = root.joinpath(*safe_relative(name, what).parts)
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        inside = False
    if not inside:
        raise InputError(f"{what} {shown(name)} leads outside {root} (through a link); refused")
    return path
