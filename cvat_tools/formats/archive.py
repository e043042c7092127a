"""CVAT export archives (.zip) opened safely.

A member is refused (InputError, nothing extracted) when its name is absolute or climbs out
with ``..``, when it is a symlink or other special file, or when the archive would expand
past :data:`MAX_TOTAL_BYTES`, past :data:`MAX_RATIO` times the archive's own size, or a member
over :data:`_RATIO_FLOOR` past :data:`MAX_RATIO` times its compressed size (zip bombs, including
many small well-compressed members). Sizes are checked against what is actually written, not
only the header.
"""
from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import InputError
from .safe_names import shown

MAX_TOTAL_BYTES = 4 * 1024 ** 3  # a CVAT export with its images stays well below
MAX_MEMBERS = 100_000  # a CVAT task export: one member per image plus a few
MAX_RATIO = 200  # JPEG/PNG barely compress; XML/JSON compress ~10-30x
_RATIO_FLOOR = 64 * 1024  # tiny members (empty label files) may compress arbitrarily well
_TOTAL_RATIO_FLOOR = 64 * 1024 * 1024  # a whole archive expanding less than this is harmless


def _check_member(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise InputError(f"{archive}: member {shown(info.filename)} points outside the archive; refused")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool stored no file type
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise InputError(f"{archive}: member {shown(info.filename)} is a link or special file; refused")
    if info.is_dir():
        return None
    if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise InputError(
            f"{archive}: member {shown(info.filename)} expands {info.file_size / max(info.compress_size, 1):.0f}x "
            "(possible zip bomb); refused"
        )
    return path


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip into ``dest`` after checking every member; returns ``dest``."""
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{archive}: not a readable zip archive ({str(exc)[:200]})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise InputError(f"{archive}: {len(infos)} members is over the {MAX_MEMBERS} limit; refused")
        members = [(info, _check_member(info, archive)) for info in infos]
        declared = sum(info.file_size for info, _ in members)
        if declared > MAX_TOTAL_BYTES:
            raise InputError(f"{archive}: expands to {declared / 1e9:.1f} GB, over the "
                             f"{MAX_TOTAL_BYTES / 1e9:.0f} GB limit (possible zip bomb); refused")
        packed = max(archive.stat().st_size, 1)
        if declared > _TOTAL_RATIO_FLOOR and declared > MAX_RATIO * packed:
            raise InputError(f"{archive}: expands {declared / packed:.0f}x ({declared / 1e6:.0f} MB from "
                             f"{packed / 1e6:.1f} MB; possible zip bomb); refused")
        written = 0
        dest.mkdir(parents=True, exist_ok=True)
        for info, rel in members:
            if rel is None:
                continue
            target = dest.joinpath(*rel.parts)
            limit = info.file_size
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    # headers can lie: count what actually comes out
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        limit -= len(chunk)
                        if limit < 0 or written > MAX_TOTAL_BYTES:
                            raise InputError(f"{archive}: member {shown(info.filename)} expands past its "
                                             "declared size (possible zip bomb); refused")
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError,
                    NotImplementedError) as exc:
                raise InputError(f"{archive}: member {shown(info.filename)} cannot be extracted "
                                 f"({str(exc)[:200]})") from None
    return dest


def _own_export(root: Path) -> Path | None:
    """annotations.json of a folder ``cvat-tools export`` wrote (its marker or its manifest)."""
    from ..markers import read_marker

    coco = root / "annotations.json"
    if not coco.is_file():
        return None
    marker = read_marker(root)
    if (marker is not None and marker.get("command") == "export") or (root / "manifest.json").is_file():
        return coco
    return None


def _datumaro_file(root: Path, shown_as: str) -> Path | None:
    folder = root / "annotations"
    if not folder.is_dir():
        return None
    if (folder / "default.json").is_file():
        return folder / "default.json"
    subsets = sorted(p for p in folder.glob("*.json") if not p.name.startswith(("instances_", "person_keypoints_")))
    if len(subsets) > 1:
        raise InputError(f"{shown_as}: several Datumaro subsets ({', '.join(p.name for p in subsets[:5])}); "
                         "give the one to read (e.g. annotations/train.json)")
    return subsets[0] if subsets else None


def find_annotation_file(root: Path, shown_as: str | None = None) -> tuple[str, Path]:
    """(format, path) of the annotations inside an extracted CVAT export or a folder.

    ``shown_as`` names the folder in errors (the zip it was extracted from)."""
    root = Path(root)
    shown_as = shown_as or str(root)
    for fmt, path in (("cvat", root / "annotations.xml"), ("yolo", root / "data.yaml")):
        if path.is_file():
            return fmt, path
    coco = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    if coco:
        return "coco", coco[0]
    own = _own_export(root)
    if own is not None:
        return "coco", own
    datumaro = _datumaro_file(root, shown_as)
    if datumaro is not None:
        return "json", datumaro
    xmls = sorted(root.rglob("*.xml"))
    if len(xmls) == 1:
        return "cvat", xmls[0]
    jsons = sorted(root.rglob("*.json"))
    if len(jsons) == 1:
        return "json", jsons[0]
    raise InputError(f"{shown_as}: no annotations.xml, annotations/instances_*.json, "
                     "annotations/default.json or data.yaml in it; export from CVAT as 'CVAT for "
                     "images 1.1', 'COCO 1.0', 'Datumaro 1.0' or 'Ultralytics YOLO Segmentation 1.0'")
