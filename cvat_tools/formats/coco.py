"""COCO 1.0 instances JSON (what CVAT exports as "COCO 1.0" and training loaders read).

Writing: polygons as ``segmentation: [[x, y, ...]]``, masks as compressed RLE (``counts`` a
string, as pycocotools writes it), boxes with an empty segmentation; ``bbox`` [x, y, w, h],
``area`` (polygon area, or mask pixel count), ``iscrowd``, ``score`` when known, and CVAT's
``attributes`` (occluded, z_order, group and the shape's own attributes). Categories are
numbered from 1 in label order. Point shapes have no COCO instance form and are skipped.

Reading: all of the above, plus uncompressed RLE; a segmentation made of several polygons
becomes one instance per polygon, sharing a group.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..atomic import write_json
from ..errors import InputError
from ..guarded import load_json
from . import masks
from .annotations import Box, Dataset, ImageAnnotation, Instance, LabelSpec, Mask, Points, Polygon
from .labelspecs import has_details, spec_from_json, spec_to_json
from .safe_names import shown

MAX_JSON_BYTES = 512 * 1024 * 1024
MAX_TOTAL_MASK_PIXELS = 192_000_000  # decoded mask pixels (1 byte each) one file may hold
# CVAT's own keys in a COCO annotation's "attributes" (CVAT's COCO export writes occluded and
# rotation there, and track_id/keyframe for video); the rest are the shape's own attributes
_CVAT_KEYS = ("occluded", "z_order", "group", "source", "iscrowd", "rotation", "track_id", "keyframe")
# a category's full CVAT label declaration (attribute types, values, colour), when it has one
LABEL_KEY = "cvat_label"


# --------------------------------------------------------------------------------------------
# writing


def _bbox(geom) -> list[float]:
    if isinstance(geom, Box):
        return [geom.xtl, geom.ytl, geom.xbr - geom.xtl, geom.ybr - geom.ytl]
    if isinstance(geom, Mask):
        tight = masks.mask_tight(geom)
        if tight is None:
            return [float(geom.left), float(geom.top), 0.0, 0.0]
        return [float(tight.left), float(tight.top), float(tight.width), float(tight.height)]
    x0, y0, x1, y1 = masks.polygon_bbox(geom.points)
    return [x0, y0, x1 - x0, y1 - y0]


def instance_to_coco(inst: Instance, image: ImageAnnotation, ann_id: int, category_id: int) -> dict | None:
    """One COCO annotation dict, or None for a geometry COCO instances cannot hold (points)."""
    geom = inst.geometry
    if isinstance(geom, Points):
        return None
    if isinstance(geom, Polygon):
        segmentation: list | dict = [[round(float(v), 4) for xy in geom.points for v in xy]]
        area = masks.polygon_area(geom.points)
    elif isinstance(geom, Mask):
        full = masks.mask_to_full(geom, image.width, image.height)
        segmentation = masks.coco_rle_encode(full)
        area = float(full.sum())
    else:
        segmentation = []
        area = float(max(geom.xbr - geom.xtl, 0) * max(geom.ybr - geom.ytl, 0))
    attributes = {"occluded": bool(inst.occluded), "z_order": inst.z_order}
    if inst.group:
        attributes["group"] = inst.group
    if inst.source and inst.source != "manual":
        attributes["source"] = inst.source
    attributes.update({k: v for k, v in inst.attributes.items() if k != "iscrowd"})
    ann = {
        "id": ann_id,
        "image_id": image.id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": round(float(area), 4),
        "bbox": [round(float(v), 4) for v in _bbox(geom)],
        "iscrowd": 1 if str(inst.attributes.get("iscrowd", "0")) in ("1", "true", "True") else 0,
        "attributes": attributes,
    }
    if inst.score is not None:
        ann["score"] = float(inst.score)
    return ann


def to_coco(dataset: Dataset) -> dict:
    """The COCO instances dict of a dataset (image ids 1..n unless the images carry ids)."""
    names = dataset.all_label_names()
    category = {name: i + 1 for i, name in enumerate(names)}
    declared = {spec.name: spec for spec in dataset.labels if has_details(spec)}
    out = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"description": "cvat-tools", "version": "1.0"},
        "categories": [{"id": category[n], "name": n, "supercategory": "",
                        **({LABEL_KEY: spec_to_json(declared[n])} if n in declared else {})} for n in names],
        "images": [],
        "annotations": [],
    }
    ids = [image.id for image in dataset.images]
    use_own_ids = all(i is not None for i in ids) and len(set(ids)) == len(ids)
    ann_id = 1
    for index, image in enumerate(dataset.images):
        image_id = image.id if use_own_ids else index + 1
        out["images"].append({"id": image_id, "file_name": image.name,
                              "width": image.width, "height": image.height})
        keyed = ImageAnnotation(image.name, image.width, image.height, id=image_id)
        for inst in image.instances:
            ann = instance_to_coco(inst, keyed, ann_id, category[inst.label])
            if ann is None:
                dataset.skipped.append({"image": image.name, "label": inst.label,
                                        "reason": "points have no COCO instance form"})
                continue
            out["annotations"].append(ann)
            ann_id += 1
    return out


def write_coco(dataset: Dataset, path: str | Path) -> Path:
    """Write a COCO instances JSON file atomically."""
    return write_json(path, to_coco(dataset))


# --------------------------------------------------------------------------------------------
# reading


def _shown(value) -> str:
    return shown(value, 40)


def read_coco(path: str | Path) -> Dataset:
    path = Path(path)
    data = load_json(path, max_bytes=MAX_JSON_BYTES)
    return from_coco(data, str(path))


def _segmentation(seg, image: ImageAnnotation, where: str, budget: list[int]) -> list:
    if isinstance(seg, dict):
        try:
            size = [int(v) for v in seg["size"]]
            if size != [image.height, image.width]:
                raise InputError(f"{where}: RLE size {str(size)[:40]} is not the image's "
                                 f"[{image.height}, {image.width}]")
            mask = masks.coco_rle_to_mask(seg, max_pixels=budget[0])
        except InputError:
            raise
        except masks.MaskBudgetError:
            raise InputError(f"{where}: the file's masks add up to over "
                             f"{MAX_TOTAL_MASK_PIXELS // 10**6} million pixels; export the task in parts") from None
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"{where}: bad RLE segmentation ({str(exc)[:200]})") from None
        if mask is not None:
            budget[0] -= mask.width * mask.height
            if budget[0] < 0:
                raise InputError(f"{where}: the file's masks add up to over "
                                 f"{MAX_TOTAL_MASK_PIXELS // 10**6} million pixels; export the task in parts")
        return [mask] if mask is not None else []  # empty: falls back to the bbox
    if isinstance(seg, list):
        polygons = []
        for ring in seg:
            if not isinstance(ring, list) or len(ring) % 2:
                raise InputError(f"{where}: a polygon must be a flat list [x1, y1, x2, y2, ...]")
            try:
                values = [float(v) for v in ring]
            except (TypeError, ValueError):
                raise InputError(f"{where}: polygon coordinates must be numbers") from None
            polygons.append(Polygon(list(zip(values[0::2], values[1::2]))))
        return polygons
    raise InputError(f"{where}: segmentation must be a list of polygons or an RLE dict")


def from_coco(data: dict, name: str = "<coco>") -> Dataset:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{name}: not a COCO instances file (no 'images' list)")
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        dataset = Dataset(labels=[_label_spec(c, name) for c in data.get("categories", [])])
        by_id: dict[int, ImageAnnotation] = {}
        for img in data["images"]:
            image = ImageAnnotation(name=str(img["file_name"]), width=int(img["width"]),
                                    height=int(img["height"]), id=int(img["id"]))
            if not (0 < image.width and 0 < image.height
                    and image.width * image.height <= masks.MAX_MASK_PIXELS):
                raise InputError(f"{name}: image id={image.id}: size {image.width}x{image.height} "
                                 f"is not positive or over the {masks.MAX_MASK_PIXELS // 10**6} MP limit")
            by_id[image.id] = image
            dataset.images.append(image)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"{name}: malformed images or categories ({type(exc).__name__}: {str(exc)[:200]})") from None
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise InputError(f"{name}: 'annotations' must be a list")
    budget = [MAX_TOTAL_MASK_PIXELS]
    for ann in annotations:
        if not isinstance(ann, dict):
            raise InputError(f"{name}: every annotation must be an object")
        where = f"{name}: annotation id={_shown(ann.get('id'))}"
        try:
            _read_annotation(ann, where, by_id, categories, budget)
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"{where}: malformed ({type(exc).__name__}: {str(exc)[:200]})") from None
    return dataset


def _label_spec(category: dict, name: str) -> LabelSpec:
    if category.get(LABEL_KEY) is None:
        return LabelSpec(name=str(category["name"]))
    spec = spec_from_json(category[LABEL_KEY], f"{name}: category {shown(category['name'], 40)}")
    spec.name = str(category["name"])  # the category's name is what annotations refer to
    return spec


def to_flag(value: object, what: str, where: str) -> bool:
    """A yes/no read from JSON: true/false, 0/1 or their text ("false" is not true)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
        return value.strip().lower() in ("true", "1")
    raise InputError(f"{where}: {what} must be true or false, not {shown(value, 40)}")


def attribute_text(value: object, key: str, where: str) -> str:
    """CVAT attribute values are text; CVAT's COCO and Datumaro exports store numbers and
    checkboxes typed (true -> "true", 3.0 -> "3")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"  # CVAT's checkbox values
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    if value is None:
        return ""
    raise InputError(f"{where}: attribute {shown(key, 40)} must be text, a number or true/false, "
                     f"not {type(value).__name__}")


def _read_annotation(ann: dict, where: str, by_id: dict, categories: dict, budget: list[int]) -> None:
    image = by_id.get(ann.get("image_id"))
    if image is None:
        raise InputError(f"{where}: image_id {_shown(ann.get('image_id'))} is not in 'images'")
    label = categories.get(ann.get("category_id"))
    if label is None:
        raise InputError(f"{where}: category_id {_shown(ann.get('category_id'))} is not in 'categories'")
    attrs = dict(ann.get("attributes") or {})
    extra = {str(k): attribute_text(v, str(k), where) for k, v in attrs.items() if k not in _CVAT_KEYS}
    occluded = to_flag(attrs.get("occluded", False), "attributes.occluded", where)
    if ann.get("iscrowd"):
        extra["iscrowd"] = "1"
    seg = ann.get("segmentation")
    geometries = _segmentation(seg, image, where, budget) if seg else []
    if not geometries:
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise InputError(f"{where}: neither a segmentation nor a bbox")
        x, y, w, h = (float(v) for v in bbox)
        geometries = [Box(x, y, x + w, y + h)]
    group = attrs.get("group") or (int(ann.get("id", 0)) if len(geometries) > 1 else None)
    for geom in geometries:
        image.instances.append(
            Instance(
                label=label,
                geometry=geom,
                score=float(ann["score"]) if ann.get("score") is not None else None,
                attributes=dict(extra),
                occluded=occluded,
                z_order=int(attrs.get("z_order", 0) or 0),
                group=int(group) if group else None,
                source=str(attrs.get("source", "manual")),
            )
        )
