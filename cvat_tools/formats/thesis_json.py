"""The thesis' prediction JSON::

    {"data": {"0": {"filename": "IMG_1.jpg", "height": 3024, "width": 4032,
                    "masks": [{"class_name": "neutrophil", "score": 0.97,
                               "bounding_box": {"x1": .., "x2": .., "y1": .., "y2": ..},
                               "vertices": [[x, y], ...]}]}}}

One polygon per cell. Masks and boxes are written as their polygon outline; points are skipped.
"""
from __future__ import annotations

from pathlib import Path

from ..atomic import write_json
from ..errors import InputError
from ..guarded import load_json
from . import masks
from .annotations import Box, Dataset, ImageAnnotation, Instance, Mask, Points, Polygon
from .safe_names import shown

MAX_JSON_BYTES = 512 * 1024 * 1024


def is_thesis_json(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("data"), dict)


def read_thesis_json(path: str | Path) -> Dataset:
    path = Path(path)
    return from_thesis_json(load_json(path, max_bytes=MAX_JSON_BYTES), str(path))


def from_thesis_json(data: dict, name: str = "<json>") -> Dataset:
    if not is_thesis_json(data):
        raise InputError(f"{name}: expected {{\"data\": {{\"0\": {{\"filename\": ...}}}}}} (thesis JSON)")
    dataset = Dataset()
    keys = sorted(data["data"], key=lambda k: (not str(k).isdigit(), int(k) if str(k).isdigit() else 0, str(k)))
    for key in keys:
        entry = data["data"][key]
        where = f"{name}: data[{shown(key, 40)}]"
        try:
            image = ImageAnnotation(name=str(entry["filename"]), width=int(entry["width"]),
                                    height=int(entry["height"]),
                                    id=int(key) if str(key).isdigit() else None)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"{where}: needs filename, width and height ({str(exc)[:200]})") from None
        if not (0 < image.width and 0 < image.height and image.width * image.height <= masks.MAX_MASK_PIXELS):
            raise InputError(f"{where}: image size {image.width}x{image.height} is not positive or "
                             f"over the {masks.MAX_MASK_PIXELS // 10**6} MP limit")
        cells = entry.get("masks") or []
        if not isinstance(cells, list):
            raise InputError(f"{where}: 'masks' must be a list")
        for k, cell in enumerate(cells):
            cell_where = f"{where}.masks[{k}]"
            try:
                label = str(cell["class_name"])
                points = [(float(x), float(y)) for x, y in cell.get("vertices") or []]
                score = cell.get("score")
                score = float(score) if score is not None else None
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                raise InputError(f"{cell_where}: needs class_name and vertices [[x, y], ...] "
                                 f"({str(exc)[:200]})") from None
            if not points:
                box = cell.get("bounding_box") or {}
                try:
                    geom = Box(float(box["x1"]), float(box["y1"]), float(box["x2"]), float(box["y2"]))
                except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
                    dataset.skipped.append({"image": image.name, "label": label,
                                            "reason": f"{cell_where}: no vertices and no bounding_box"})
                    continue
            else:
                geom = Polygon(points)
            image.instances.append(Instance(label=label, geometry=geom, score=score,
                                            source="auto" if score is not None else "manual"))
        dataset.images.append(image)
    return dataset


def to_thesis_json(dataset: Dataset) -> dict:
    out: dict = {"data": {}}
    for index, image in enumerate(dataset.images):
        cells = []
        for inst in image.instances:
            geom = inst.geometry
            if isinstance(geom, Polygon):
                points = geom.points
            elif isinstance(geom, Mask):
                points = masks.mask_to_polygon(geom.bitmap, geom.left, geom.top, min_area=1) or []
            elif isinstance(geom, Box):
                points = [(geom.xtl, geom.ytl), (geom.xbr, geom.ytl), (geom.xbr, geom.ybr), (geom.xtl, geom.ybr)]
            else:
                points = []
            if isinstance(geom, Points) or not points:
                dataset.skipped.append({"image": image.name, "label": inst.label,
                                        "reason": "no outline for thesis JSON"})
                continue
            x0, y0, x1, y1 = masks.polygon_bbox(points)
            cell = {"class_name": inst.label}
            if inst.score is not None:  # manual annotations have none
                cell["score"] = float(inst.score)
            cell["bounding_box"] = {"x1": x0, "x2": x1, "y1": y0, "y2": y1}
            cell["vertices"] = [[float(x), float(y)] for x, y in points]
            cells.append(cell)
        out["data"][str(index)] = {"filename": image.name, "height": image.height,
                                   "width": image.width, "masks": cells}
    return out


def write_thesis_json(dataset: Dataset, path: str | Path) -> Path:
    return write_json(path, to_thesis_json(dataset))
