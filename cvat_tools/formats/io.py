"""One door for every annotation format: detect it, read it, write it.

``read_annotations(path)`` takes a CVAT XML file, a COCO JSON, a Datumaro JSON, a thesis JSON,
a YOLO folder (or its data.yaml), a folder holding any of these as CVAT exports them (or as
``cvat-tools export`` wrote it), or a CVAT export ``.zip`` (opened with
archive.extract_archive's checks).
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..guarded import load_json
from .coco import MAX_JSON_BYTES
from .safe_names import shown
from .annotations import Dataset

FORMATS = ("auto", "cvat", "coco", "datumaro", "yolo", "thesis")
# A blood smear field holds hundreds of cells, not tens of thousands; every shape costs a
# full-image mask downstream, so a file cannot ask for unbounded work through tiny shapes.
MAX_INSTANCES_PER_IMAGE = 10_000


def _json_kind(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20).decode("utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    # cheap sniff first; a full parse happens in the reader
    if '"items"' in head and '"categories"' in head and '"images"' not in head:
        return "datumaro"
    if '"data"' in head and '"images"' not in head:
        return "thesis"
    if '"images"' in head or '"annotations"' in head or '"categories"' in head:
        return "coco"
    data = load_json(path, max_bytes=MAX_JSON_BYTES)
    if isinstance(data, dict) and "items" in data and "categories" in data:
        return "datumaro"
    if isinstance(data, dict) and "data" in data:
        return "thesis"
    if isinstance(data, dict) and "images" in data:
        return "coco"
    raise InputError(f"{path}: JSON is neither COCO (images/annotations), Datumaro (items/categories) "
                     "nor thesis JSON (data)")


def detect_format(path: str | Path, shown_as: str | None = None) -> tuple[str, Path]:
    """(format, file or folder to read) for a path; InputError when it is none of ours.

    ``shown_as`` names a folder in errors (the zip it was extracted from)."""
    from .archive import find_annotation_file

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        fmt, found = find_annotation_file(path, shown_as)
        return (_json_kind(found), found) if fmt == "json" else (fmt, found)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return "cvat", path
    if suffix == ".json":
        return _json_kind(path), path
    if suffix in (".yaml", ".yml"):
        return "yolo", path
    if suffix == ".zip":
        return "zip", path
    raise InputError(f"{path}: unknown annotation format; give a CVAT XML, COCO/Datumaro/thesis JSON, "
                     "YOLO data.yaml/folder or a CVAT export .zip (or --format)")


def _read(fmt: str, path: Path, images_dir: Path | None) -> Dataset:
    dataset = _read_format(fmt, path, images_dir)
    for image in dataset.images:
        if len(image.instances) > MAX_INSTANCES_PER_IMAGE:
            raise InputError(f"{path}: image {shown(image.name)} has {len(image.instances)} shapes, over "
                             f"the {MAX_INSTANCES_PER_IMAGE} limit (export writes a mask per shape)")
    return dataset


def _read_format(fmt: str, path: Path, images_dir: Path | None) -> Dataset:
    if fmt == "cvat":
        from .cvat_xml import read_cvat_xml

        if path.is_dir():
            path = path / "annotations.xml"
        return read_cvat_xml(path)
    if fmt == "coco":
        from .coco import read_coco

        if path.is_dir():
            _, path = detect_format(path)
        return read_coco(path)
    if fmt == "datumaro":
        from .datumaro import read_datumaro

        if path.is_dir():
            _, path = detect_format(path)
        return read_datumaro(path)
    if fmt == "thesis":
        from .thesis_json import read_thesis_json

        return read_thesis_json(path)
    if fmt == "yolo":
        from .yolo import read_yolo

        return read_yolo(path, images_dir=images_dir)
    raise InputError(f"{path}: unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")


@contextlib.contextmanager
def open_annotations(
    path: str | Path, format: str = "auto", images_dir: str | Path | None = None
) -> Iterator[tuple[Dataset, Path | None, str]]:
    """Yield (dataset, folder to look for the images in, format).

    The folder is where the input's own images may be: the whole extracted archive of a zip
    (images anywhere inside it), an ``images/`` folder beside the annotations, else the folder
    holding the annotations itself. A zip is extracted into a temporary folder that lives as
    long as the ``with`` block.
    """
    from .archive import extract_archive

    path = Path(path)
    images = Path(images_dir) if images_dir else None
    if format not in FORMATS:
        raise InputError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="cvat-tools-zip-") as tmp:
            root = extract_archive(path, tmp)
            fmt, found = detect_format(root, str(path)) if format == "auto" else (format, root)
            yield _read(fmt, found, images), root, fmt
        return
    fmt, found = detect_format(path) if format == "auto" else (format, path)
    dataset = _read(fmt, found, images)
    base = path if path.is_dir() else found.parent
    if not path.is_dir() and base.name == "annotations":  # COCO/Datumaro layout: images/ beside annotations/
        base = base.parent
    yield dataset, (base / "images" if (base / "images").is_dir() else base), fmt


def read_annotations(path: str | Path, format: str = "auto", images_dir: str | Path | None = None) -> Dataset:
    """Read any supported annotation file, folder or CVAT export zip into a Dataset."""
    with open_annotations(path, format, images_dir) as (dataset, _, _):
        return dataset


def write_annotations(dataset: Dataset, path: str | Path, format: str) -> Path:
    """Write a dataset as ``cvat`` (XML file), ``coco``, ``datumaro`` or ``thesis`` (JSON) or
    ``yolo`` (folder)."""
    if format == "cvat":
        from .cvat_xml import write_cvat_xml

        return write_cvat_xml(dataset, path)
    if format == "coco":
        from .coco import write_coco

        return write_coco(dataset, path)
    if format == "datumaro":
        from .datumaro import write_datumaro

        return write_datumaro(dataset, path)
    if format == "thesis":
        from .thesis_json import write_thesis_json

        return write_thesis_json(dataset, path)
    if format == "yolo":
        from .yolo import write_yolo

        return write_yolo(dataset, path)
    raise InputError(f"unknown output format {format!r}; choose cvat, coco, datumaro, thesis or yolo")
