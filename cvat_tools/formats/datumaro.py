"""Datumaro 1.0 JSON: CVAT's own lossless export/import format ("Datumaro 1.0").

A CVAT export is a zip holding ``annotations/default.json`` (one file per subset) and, with
images, ``images/default/<name>`` (older CVAT: ``images/<name>``). The JSON, as CVAT's
datumaro fork writes it (``datumaro/plugins/datumaro_format/converter.py``)::

    {"info": {},
     "categories": {"label": {"labels": [{"name": "neutrophil", "parent": "",
                                          "attributes": ["stage"]}],
                              "attributes": ["occluded"]},
                    "points": {"items": []}},
     "items": [{"id": "IMG_1", "attr": {"frame": 0},
                "image": {"path": "IMG_1.jpg", "size": [3024, 4032]},   # [height, width]
                "annotations": [
                  {"id": 0, "type": "polygon", "label_id": 0, "group": 0, "z_order": 0,
                   "attributes": {"occluded": false, "stage": "a"},
                   "points": [x1, y1, x2, y2, ...]},
                  {"type": "bbox", "bbox": [x, y, w, h], ...},
                  {"type": "mask", "rle": {"counts": "<COCO compressed RLE>", "size": [h, w]}, ...},
                  {"type": "points", "points": [...], "visibility": [2, ...], ...}]}]}

CVAT puts ``occluded`` (and ``rotation`` for boxes) among the shape's attributes and, on
import, also takes ``source`` from there; this module does the same, and writes an
instance's ``score`` as the ``score`` attribute (datumaro's convention for predictions).
Datumaro's label categories hold label and attribute *names* only, so the full declarations
(attribute types, values, defaults, colours) ride along in ``info.cvat_tools_labels`` (CVAT's
label constructor JSON; CVAT's importer ignores ``info``). Files written by upstream
datumaro (``dm_format_version`` 1.x, ``infos``, ``media``) read the same way.

Other annotation types (label/tag, polyline, ellipse, cuboid, caption, skeleton) are listed
in ``Dataset.skipped``. Masks are decoded with masks.py's bounded COCO RLE decoder under the
same total-pixel budget as the COCO reader.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..atomic import write_json
from ..errors import InputError
from ..guarded import load_json
from . import masks
from .annotations import Box, Dataset, ImageAnnotation, Instance, LabelSpec, Mask, Points, Polygon
from .coco import MAX_JSON_BYTES, MAX_TOTAL_MASK_PIXELS, attribute_text, to_flag
from .labelspecs import has_details, spec_from_json, spec_to_json
from .safe_names import shown

SUBSET = "default"
ANNOTATION_FILE = f"annotations/{SUBSET}.json"
INFO_KEY = "cvat_tools_labels"
_SOURCES = ("manual", "auto", "semi-auto", "file")  # what CVAT's importer takes from attributes
_SKIPPED_TYPES = ("label", "polyline", "ellipse", "cuboid_3d", "caption", "skeleton")


def is_datumaro(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("items"), list) and "categories" in data


# --------------------------------------------------------------------------------------------
# writing


def _item_id(name: str) -> str:
    """CVAT's item id: the image name without its extension (folders kept)."""
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and stem and "/" not in suffix else name


def _attributes(inst: Instance) -> dict:
    attrs: dict = dict(inst.attributes)
    attrs["occluded"] = bool(inst.occluded)
    if inst.source and inst.source != "manual":
        attrs["source"] = inst.source
    if inst.score is not None:
        attrs["score"] = float(inst.score)
    return attrs


def _annotation(inst: Instance, image: ImageAnnotation, ann_id: int, label_id: int) -> dict:
    ann: dict = {"id": ann_id, "attributes": _attributes(inst), "group": int(inst.group or 0),
                 "label_id": label_id, "z_order": int(inst.z_order)}
    geom = inst.geometry
    if isinstance(geom, (Polygon, Points)):
        ann["type"] = "polygon" if isinstance(geom, Polygon) else "points"
        ann["points"] = [float(v) for xy in geom.points for v in xy]
        if isinstance(geom, Points):
            ann["visibility"] = [2] * len(geom.points)  # datumaro's Visibility.visible
    elif isinstance(geom, Box):
        ann["type"] = "bbox"
        ann["attributes"]["rotation"] = 0.0
        ann["bbox"] = [float(geom.xtl), float(geom.ytl), float(geom.xbr - geom.xtl), float(geom.ybr - geom.ytl)]
    elif isinstance(geom, Mask):
        ann["type"] = "mask"
        ann["rle"] = masks.coco_rle_encode(masks.mask_to_full(geom, image.width, image.height))
    else:  # pragma: no cover - the model has no other geometry
        raise TypeError(f"unknown geometry {type(geom).__name__}")
    return ann


def to_datumaro(dataset: Dataset) -> dict:
    """The Datumaro 1.0 JSON document (one subset) of a dataset."""
    names = dataset.all_label_names()
    label_id = {name: k for k, name in enumerate(names)}
    declared = {spec.name: spec for spec in dataset.labels}
    labels = []
    for name in names:
        spec = declared.get(name)
        attrs = sorted({a.name for a in spec.attributes}) if spec else []
        labels.append({"name": name, "parent": "", "attributes": attrs})
    info = {}
    if any(has_details(spec) for spec in dataset.labels):
        info[INFO_KEY] = [spec_to_json(spec) for spec in dataset.labels]
    items = []
    for index, image in enumerate(dataset.images):
        anns = [_annotation(inst, image, k, label_id[inst.label]) for k, inst in enumerate(image.instances)]
        items.append({"id": _item_id(image.name), "annotations": anns,
                      "attr": {"frame": image.id if image.id is not None else index},
                      "image": {"path": image.name, "size": [image.height, image.width]}})
    return {"info": info,
            "categories": {"label": {"labels": labels, "attributes": ["occluded"]}, "points": {"items": []}},
            "items": items}


def write_datumaro(dataset: Dataset, path: str | Path) -> Path:
    """Write the Datumaro JSON file (``annotations/default.json`` in CVAT's layout) atomically."""
    return write_json(path, to_datumaro(dataset))


# --------------------------------------------------------------------------------------------
# reading


def read_datumaro(path: str | Path) -> Dataset:
    path = Path(path)
    return from_datumaro(load_json(path, max_bytes=MAX_JSON_BYTES), str(path))


def _labels(data: dict, name: str) -> list[LabelSpec]:
    categories = data.get("categories")
    if not isinstance(categories, dict):
        raise InputError(f"{name}: 'categories' must be an object")
    label_cat = categories.get("label") or {}
    entries = label_cat.get("labels", []) if isinstance(label_cat, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{name}: categories.label.labels must be a list")
    info = data.get("info") if isinstance(data.get("info"), dict) else data.get("infos")
    carried = (info or {}).get(INFO_KEY) if isinstance(info, dict) else None
    details = {}
    if carried is not None:
        if not isinstance(carried, list):
            raise InputError(f"{name}: info.{INFO_KEY} must be a list")
        for k, obj in enumerate(carried):
            spec = spec_from_json(obj, f"{name}: info.{INFO_KEY}[{k}]")
            details[spec.name] = spec
    labels = []
    for k, entry in enumerate(entries):
        label = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(label, str) or not label:
            raise InputError(f"{name}: categories.label.labels[{k}] needs a 'name' (text)")
        labels.append(details.get(label) or LabelSpec(name=label))
    return labels


def _check_version(data: dict, name: str) -> None:
    version = data.get("dm_format_version")
    if version is not None and not (isinstance(version, str) and version.split(".")[0] == "1"):
        raise InputError(f"{name}: Datumaro format version {shown(version, 20)} is not supported "
                         "(1.x and the unversioned legacy format are); export as 'Datumaro 1.0'")


def from_datumaro(data: object, name: str = "<datumaro>") -> Dataset:
    """A Dataset from a Datumaro JSON document; InputError naming the item and annotation."""
    if not is_datumaro(data):
        raise InputError(f"{name}: not a Datumaro JSON file (needs 'items' and 'categories'); "
                         "export as 'Datumaro 1.0' and give annotations/default.json")
    _check_version(data, name)
    dataset = Dataset(labels=_labels(data, name))
    budget = [MAX_TOTAL_MASK_PIXELS]
    for index, item in enumerate(data["items"]):
        where = f"{name}: items[{index}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: must be an object")
        where = f"{where} (id {shown(item.get('id'), 60)})"
        dataset.images.append(_read_item(item, index, where, dataset, budget))
    return dataset


def _whole(value: object, what: str, where: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise InputError(f"{where}: {what} must be a whole number, not {shown(value, 40)}")
    if low is not None and value < low:
        raise InputError(f"{where}: {what} {shown(value, 40)} is below {low}")
    return int(value)


def _image_of(item: dict, index: int, where: str) -> ImageAnnotation:
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise InputError(f"{where}: 'id' must be a non-empty text")
    image = item.get("image")
    if not isinstance(image, dict) or not isinstance(image.get("size"), list) or len(image["size"]) != 2:
        raise InputError(f"{where}: no image size (image.size [height, width]); export from CVAT "
                         "again as 'Datumaro 1.0' (it always writes the size)")
    height, width = (_whole(v, "image size", where, 1) for v in image["size"])
    if width * height > masks.MAX_MASK_PIXELS:
        raise InputError(f"{where}: image size {width}x{height} is over the "
                         f"{masks.MAX_MASK_PIXELS // 10**6} MP limit")
    path = image.get("path")
    if path is not None and not isinstance(path, str):
        raise InputError(f"{where}: image.path must be text")
    attr = item.get("attr") if isinstance(item.get("attr"), dict) else {}
    frame = attr.get("frame")
    frame = frame if isinstance(frame, int) and not isinstance(frame, bool) else index
    # the item id has no extension; the image path has one (CVAT keeps the task's file name)
    return ImageAnnotation(name=path or item_id, width=width, height=height, id=frame)


def _read_item(item: dict, index: int, where: str, dataset: Dataset, budget: list[int]) -> ImageAnnotation:
    image = _image_of(item, index, where)
    anns = item.get("annotations", [])
    if not isinstance(anns, list):
        raise InputError(f"{where}: 'annotations' must be a list")
    for k, ann in enumerate(anns):
        at = f"{where}.annotations[{k}]"
        if not isinstance(ann, dict):
            raise InputError(f"{at}: must be an object")
        try:
            inst = _read_annotation(ann, at, image, dataset, budget)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"{at}: malformed ({type(exc).__name__}: {str(exc)[:200]})") from None
        if inst is not None:
            image.instances.append(inst)
    return image


def _flat_points(value: object, where: str, minimum: int) -> list[tuple[float, float]]:
    if not isinstance(value, list) or len(value) % 2 or len(value) < 2 * minimum:
        raise InputError(f"{where}: 'points' must be a flat list [x1, y1, x2, y2, ...] of "
                         f"at least {minimum} point(s)")
    if len(value) > 2 * masks.MAX_POLYGON_VERTICES:
        raise InputError(f"{where}: {len(value) // 2} points is over the "
                         f"{masks.MAX_POLYGON_VERTICES} limit for one shape")
    numbers = [_number(v, "a coordinate", where) for v in value]
    return list(zip(numbers[0::2], numbers[1::2]))


def _number(value: object, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: {what} must be a finite number, not {shown(value, 40)}")
    return float(value)


def _mask(rle: object, image: ImageAnnotation, where: str, budget: list[int]) -> Mask | None:
    if not isinstance(rle, dict) or not isinstance(rle.get("counts"), (str, list)):
        raise InputError(f"{where}: 'rle' must be {{'counts': ..., 'size': [h, w]}}")
    size = rle.get("size")
    if size != [image.height, image.width]:
        raise InputError(f"{where}: mask size {shown(size, 40)} is not the image's "
                         f"[{image.height}, {image.width}]")
    over = InputError(f"{where}: the file's masks add up to over {MAX_TOTAL_MASK_PIXELS // 10**6} "
                      "million pixels; export the task in parts")
    try:
        mask = masks.coco_rle_to_mask(rle, max_pixels=budget[0])
    except masks.MaskBudgetError:
        raise over from None
    except ValueError as exc:
        raise InputError(f"{where}: bad mask RLE ({str(exc)[:200]})") from None
    if mask is not None:
        budget[0] -= mask.width * mask.height
        if budget[0] < 0:
            raise over
    return mask


def _geometry(ann: dict, kind: str, where: str, image: ImageAnnotation, budget: list[int]):
    if kind == "polygon":
        return Polygon(_flat_points(ann.get("points"), where, 1))
    if kind == "points":
        return Points(_flat_points(ann.get("points"), where, 1))
    if kind == "bbox":
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise InputError(f"{where}: 'bbox' must be [x, y, width, height]")
        x, y, w, h = (_number(v, "a bbox value", where) for v in bbox)
        return Box(x, y, x + w, y + h)
    return _mask(ann.get("rle"), image, where, budget)


def _label(ann: dict, where: str, dataset: Dataset) -> str:
    label_id = _whole(ann.get("label_id"), "label_id", where, 0)
    if label_id >= len(dataset.labels):
        raise InputError(f"{where}: label_id {label_id} is not in categories.label.labels "
                         f"(0..{len(dataset.labels) - 1})")
    return dataset.labels[label_id].name


def _read_annotation(ann: dict, where: str, image: ImageAnnotation, dataset: Dataset,
                     budget: list[int]) -> Instance | None:
    kind = ann.get("type")
    if kind in _SKIPPED_TYPES:
        dataset.skipped.append({"image": image.name, "label": "", "reason": f"Datumaro {kind} is not supported"})
        return None
    if kind not in ("polygon", "points", "bbox", "mask"):
        raise InputError(f"{where}: unknown annotation type {shown(kind, 40)}")
    label = _label(ann, where, dataset)
    geometry = _geometry(ann, kind, where, image, budget)
    if geometry is None:
        dataset.skipped.append({"image": image.name, "label": label, "reason": "empty mask"})
        return None
    attrs = ann.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise InputError(f"{where}: 'attributes' must be an object")
    attrs = dict(attrs)
    occluded = to_flag(attrs.pop("occluded", False), "occluded", where)
    if _number(attrs.pop("rotation", 0.0) or 0.0, "rotation", where) != 0:
        dataset.skipped.append({"image": image.name, "label": label,
                                "reason": "rotated box read without its rotation"})
    for key in ("track_id", "keyframe", "outside"):  # video tracks: read as shapes per frame
        attrs.pop(key, None)
    source = attrs.pop("source", "manual")
    score = attrs.get("score")
    if isinstance(score, (int, float)) and not isinstance(score, bool):  # else a text attribute
        score = attrs.pop("score")
    else:
        score = None
    group = _whole(ann.get("group", 0) or 0, "group", where, 0)
    return Instance(
        label=label, geometry=geometry,
        score=None if score is None else _number(score, "score", where),
        attributes={str(k): attribute_text(v, str(k), where) for k, v in attrs.items()},
        occluded=occluded,
        z_order=_whole(ann.get("z_order", 0) or 0, "z_order", where),
        group=group or None,
        source=source.lower() if isinstance(source, str) and source.lower() in _SOURCES else "manual",
    )
