"""Ultralytics YOLO segmentation, in the layout CVAT exports as "Ultralytics YOLO Segmentation 1.0"::

    data.yaml            names: {0: band cell, 1: ...}, path: ., train: train.txt
    train.txt            images/train/<name> per line, for the images present
    images/train/<name>  the images (optional in an export "without images")
    labels/train/<stem>.txt   one line per instance: class x1 y1 x2 y2 ... (normalized 0..1)

Coordinates are normalized, so reading needs each image's size: from the image next to the
labels, from ``images_dir`` (by file stem), or from ``sizes`` given by the caller. A label line
with four numbers is a detection box (cx cy w h); lines with fewer than three points are
listed in ``Dataset.skipped``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..atomic import atomic_dir
from ..errors import InputError
from ..guarded import load_yaml
from ..imaging import IMAGE_SUFFIXES, image_size
from . import masks
from .annotations import Box, Dataset, ImageAnnotation, Instance, LabelSpec, Mask, Points, Polygon
from .safe_names import safe_relative, unique_file_names

SUBSET = "train"
MAX_LABEL_BYTES = 64 * 2**20  # one image's label lines; a field's cells take a few hundred KB


def find_data_yaml(path: str | Path) -> Path | None:
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return path
    for name in ("data.yaml", "data.yml"):
        if (path / name).is_file():
            return path / name
    return None


def _names(data_yaml: Path) -> list[str]:
    data = load_yaml(data_yaml)
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            indexed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise InputError(f"{data_yaml}: 'names' keys must be class numbers 0..n-1") from None
        if sorted(indexed) != list(range(len(indexed))):
            raise InputError(f"{data_yaml}: 'names' must number the classes 0..{len(indexed) - 1}")
        return [indexed[i] for i in range(len(indexed))]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise InputError(f"{data_yaml}: no 'names' (class list) in it; is this a YOLO data.yaml?")


def _image_index(*folders: Path | None) -> dict[str, Path]:
    """stem -> image path, first folder wins."""
    index: dict[str, Path] = {}
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault(p.stem, p)
    return index


def read_yolo(
    path: str | Path,
    images_dir: str | Path | None = None,
    sizes: dict[str, tuple[int, int]] | None = None,
) -> Dataset:
    """Read a YOLO segmentation folder (or its data.yaml). ``sizes``: image name -> (w, h)."""
    data_yaml = find_data_yaml(path)
    if data_yaml is None:
        raise InputError(f"{path}: no data.yaml; a YOLO export has data.yaml beside labels/")
    root = data_yaml.parent
    names = _names(data_yaml)
    dataset = Dataset(labels=[LabelSpec(name=n) for n in names])
    label_files = sorted((root / "labels").rglob("*.txt")) if (root / "labels").is_dir() else []
    images = _image_index(root / "images", Path(images_dir) if images_dir else None)
    sizes = dict(sizes or {})
    by_stem = {Path(n).stem: n for n in sizes}
    seen: set[str] = set()
    for index, label_file in enumerate(label_files):
        stem = label_file.stem
        seen.add(stem)
        image_path = images.get(stem)
        if stem in by_stem:
            name = by_stem[stem]
            width, height = sizes[name]
        elif image_path is not None:
            name = image_path.name
            width, height = image_size(image_path)
        else:
            raise InputError(
                f"{label_file}: no image '{stem}.*' under {root / 'images'}"
                + (f" or {images_dir}" if images_dir else "")
                + "; YOLO coordinates are relative to the image size, pass --images DIR"
            )
        image = ImageAnnotation(name=name, width=int(width), height=int(height), id=index)
        _read_label_file(label_file, image, names, dataset)
        dataset.images.append(image)
    for stem, image_path in images.items():  # images without a label file: no instances
        if stem not in seen and image_path.is_relative_to(root / "images"):
            w, h = image_size(image_path)
            dataset.images.append(ImageAnnotation(name=image_path.name, width=w, height=h,
                                                  id=len(dataset.images)))
    return dataset


def _read_label_file(label_file: Path, image: ImageAnnotation, names: list[str], dataset: Dataset) -> None:
    try:
        if label_file.stat().st_size > MAX_LABEL_BYTES:
            raise InputError(f"{label_file}: over the {MAX_LABEL_BYTES // 2**20} MiB limit for a label file")
        lines = label_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{label_file}: cannot read ({exc})") from None
    for number, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{label_file}:{number}"
        try:
            cls = int(tokens[0])
            values = [float(v) for v in tokens[1:]]
        except ValueError:
            raise InputError(f"{where}: expected 'class x1 y1 x2 y2 ...' numbers, got {line[:60]!r}") from None
        if not 0 <= cls < len(names):
            raise InputError(f"{where}: class {cls} is not in data.yaml names (0..{len(names) - 1})")
        label = names[cls]
        w, h = image.width, image.height
        if len(values) == 4:
            cx, cy, bw, bh = values
            geom = Box((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
        elif len(values) >= 6 and len(values) % 2 == 0:
            geom = Polygon([(x * w, y * h) for x, y in zip(values[0::2], values[1::2])])
        else:
            dataset.skipped.append({"image": image.name, "label": label,
                                    "reason": f"{where}: {len(values)} coordinates is not a polygon"})
            continue
        image.instances.append(Instance(label=label, geometry=geom))


def _polygon_of(inst: Instance) -> list[tuple[float, float]] | None:
    geom = inst.geometry
    if isinstance(geom, Polygon):
        return geom.points
    if isinstance(geom, Box):
        return [(geom.xtl, geom.ytl), (geom.xbr, geom.ytl), (geom.xbr, geom.ybr), (geom.xtl, geom.ybr)]
    if isinstance(geom, Mask):
        return masks.mask_to_polygon(geom.bitmap, geom.left, geom.top, min_area=1)
    return None


def write_yolo(dataset: Dataset, folder: str | Path, images_dir: str | Path | None = None,
               image_files: dict[str, Path] | None = None) -> Path:
    """Write the CVAT/Ultralytics layout into ``folder`` (atomically).

    Images are copied when given (``image_files``: image name -> file, else found by stem
    under ``images_dir``); ``train.txt`` lists only the images written, never a path that does
    not exist (Ultralytics would fail on it). Without images it is empty and the labels
    stand alone (CVAT's YOLO import reads its item list from train.txt: give the images)."""
    names = dataset.all_label_names()
    index = {n: i for i, n in enumerate(names)}
    sources = _image_index(Path(images_dir)) if images_dir else {}
    image_files = image_files or {}
    with atomic_dir(folder) as tmp:
        (tmp / "labels" / SUBSET).mkdir(parents=True)
        (tmp / "images" / SUBSET).mkdir(parents=True)
        listed = []
        # flat names with distinct stems: sub/a.png and other/a.png must not share labels/a.txt
        flat = unique_file_names([image.name for image in dataset.images])
        for image, name in zip(dataset.images, flat):
            stem = Path(name).stem
            (tmp / "labels" / SUBSET / f"{stem}.txt").write_text("".join(_label_lines(image, index, dataset)))
            source = image_files.get(image.name) or sources.get(Path(safe_relative(image.name).name).stem)
            if source is not None:
                shutil.copy2(source, tmp / "images" / SUBSET / name)
                listed.append(f"images/{SUBSET}/{name}")
        (tmp / "train.txt").write_text("".join(l + "\n" for l in listed))
        data = {"names": {i: n for i, n in enumerate(names)}, "path": ".", SUBSET: f"{SUBSET}.txt"}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return Path(folder)


def _label_lines(image: ImageAnnotation, index: dict[str, int], dataset: Dataset) -> list[str]:
    lines = []
    for inst in image.instances:
        points = _polygon_of(inst)
        if points is None or isinstance(inst.geometry, Points) or len(points) < 3:
            dataset.skipped.append({"image": image.name, "label": inst.label,
                                    "reason": "no polygon for YOLO segmentation"})
            continue
        coords = " ".join(f"{x / image.width:.6f} {y / image.height:.6f}" for x, y in points)
        lines.append(f"{index[inst.label]} {coords}\n")
    return lines
