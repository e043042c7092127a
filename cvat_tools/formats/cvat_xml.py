"""CVAT for images 1.1 XML: read what CVAT exports, write what CVAT's "Upload annotations" takes.

Reads the full export (``<version>``, ``<meta>`` with the labels and their attributes, then
``<image>`` elements) and the stripped form some tools write (``<annotations>`` holding only
``<image>`` elements, as in ``../shared/data/cvat_xml``). Shapes: ``<polygon>``, ``<box>``,
``<mask rle left top width height>``, ``<points>``, each with ``label``, ``occluded``,
``z_order``, ``group_id``, ``source`` and ``<attribute name=...>value</attribute>`` children.
Other shapes (polyline, ellipse, cuboid, skeleton, tags, tracks) are listed in
``Dataset.skipped``.

The file is parsed with defusedxml with DTDs forbidden: entity expansion (billion laughs) and
external entities are refused as an InputError, never expanded.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _safe_fromstring

from ..atomic import atomic_path
from ..errors import InputError
from . import masks
from .annotations import (
    AttributeSpec,
    Box,
    Dataset,
    ImageAnnotation,
    Instance,
    LabelSpec,
    Mask,
    Points,
    Polygon,
)
from .safe_names import shown

MAX_XML_BYTES = 512 * 1024 * 1024
# Decoded mask pixels one file may hold in memory (1 byte each): a few bytes of XML can
# declare masks of any size, so the readers count what they decode.
MAX_TOTAL_MASK_PIXELS = 192_000_000
_UNSUPPORTED = ("polyline", "ellipse", "cuboid", "skeleton", "tag")


# --------------------------------------------------------------------------------------------
# reading


def read_cvat_xml(path: str | Path) -> Dataset:
    """Read a CVAT for images 1.1 XML file; InputError names the file and the problem."""
    from ..guarded import file_size

    path = Path(path)
    size = file_size(path)
    if size > MAX_XML_BYTES:
        raise InputError(f"{path}: {size / 1e6:.0f} MB is over the {MAX_XML_BYTES / 1e6:.0f} MB limit for an XML file")
    return parse_cvat_xml(path.read_bytes(), str(path))


def parse_cvat_xml(data: bytes | str, name: str = "<xml>") -> Dataset:
    try:
        root = _safe_fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise InputError(
            f"{name}: refused: the XML declares a DTD or entities ({type(exc).__name__}); "
            "CVAT never writes them - export the annotations from CVAT again"
        ) from None
    except ET.ParseError as exc:
        raise InputError(f"{name}: not well-formed XML ({exc})") from None
    if root.tag != "annotations":
        raise InputError(f"{name}: root element is <{root.tag}>, not <annotations>; "
                         "export as 'CVAT for images 1.1'")
    dataset = Dataset(labels=_read_labels(root))
    if root.find("track") is not None:
        dataset.skipped.append({"image": "", "label": "", "reason": "tracks (video mode) are not read; "
                                "export as 'CVAT for images 1.1'"})
    budget = [MAX_TOTAL_MASK_PIXELS]
    for index, el in enumerate(root.iter("image")):
        dataset.images.append(_read_image(el, index, name, dataset, budget))
    return dataset


def _read_labels(root: ET.Element) -> list[LabelSpec]:
    meta = root.find("meta")
    if meta is None:
        return []
    labels = []
    # task, job or project export: <meta><task|job|project><labels><label>
    for label_el in meta.iter("label"):
        name = (label_el.findtext("name") or "").strip()
        if not name:
            continue
        attributes = []
        for attr_el in label_el.iter("attribute"):
            values = attr_el.findtext("values") or ""
            attributes.append(
                AttributeSpec(
                    name=(attr_el.findtext("name") or "").strip(),
                    input_type=(attr_el.findtext("input_type") or "text").strip(),
                    values=[v for v in values.split("\n") if v != ""],
                    default=attr_el.findtext("default_value") or "",
                    mutable=(attr_el.findtext("mutable") or "").strip().lower() == "true",
                )
            )
        labels.append(
            LabelSpec(
                name=name,
                attributes=attributes,
                color=(label_el.findtext("color") or None),
                type=(label_el.findtext("type") or "any").strip(),
            )
        )
    return labels


def _number(value: str | None, what: str, where: str) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what}={shown(value)} is not a number") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise InputError(f"{where}: {what}={shown(value)} is not a finite number")
    return out


def _int(value: str | None, what: str, where: str, default: int | None = None) -> int:
    if value is None or value == "":
        if default is None:
            raise InputError(f"{where}: missing {what}")
        return default
    number = _number(value, what, where)
    if not number.is_integer():
        raise InputError(f"{where}: {what}={shown(value)} is not a whole number")
    return int(number)


def _points(text: str | None, where: str) -> list[tuple[float, float]]:
    out = []
    for pair in (text or "").split(";"):
        if not pair.strip():
            continue
        parts = pair.split(",")
        if len(parts) != 2:
            raise InputError(f"{where}: malformed point {shown(pair)} (expected 'x,y;x,y;...')")
        out.append((_number(parts[0], "x", where), _number(parts[1], "y", where)))
    return out


def _read_image(el: ET.Element, index: int, name: str, dataset: Dataset,
                budget: list[int]) -> ImageAnnotation:
    image_name = el.get("name")
    where = f"{name}: <image id={shown(el.get('id'), 20)} name={shown(image_name)}>"
    if not image_name:
        raise InputError(f"{name}: <image> number {index + 1} has no name")
    image = ImageAnnotation(
        name=image_name,
        width=_int(el.get("width"), "width", where),
        height=_int(el.get("height"), "height", where),
        id=_int(el.get("id"), "id", where, default=index),
    )
    if image.width <= 0 or image.height <= 0:
        raise InputError(f"{where}: image size {image.width}x{image.height} is not positive")
    if image.width * image.height > masks.MAX_MASK_PIXELS:
        raise InputError(f"{where}: image size {image.width}x{image.height} is over the "
                         f"{masks.MAX_MASK_PIXELS // 10**6} MP limit")
    for shape in el:
        tag = shape.tag
        label = shape.get("label", "")
        shape_where = f"{where} <{shown(tag, 20)} label={shown(label, 40)}>"
        if tag in _UNSUPPORTED:
            dataset.skipped.append({"image": image_name, "label": label, "reason": f"{tag} is not supported"})
            continue
        if tag == "polygon":
            geometry = Polygon(_points(shape.get("points"), shape_where))
        elif tag == "points":
            geometry = Points(_points(shape.get("points"), shape_where))
        elif tag == "box":
            geometry = Box(*(_number(shape.get(k), k, shape_where) for k in ("xtl", "ytl", "xbr", "ybr")))
            if _number(shape.get("rotation", "0"), "rotation", shape_where) != 0:
                dataset.skipped.append({"image": image_name, "label": label,
                                        "reason": "rotated box read without its rotation"})
        elif tag == "mask":
            geometry = _read_mask(shape, shape_where, image, budget)
        else:
            continue  # unknown element: CVAT adds new ones from time to time
        image.instances.append(
            Instance(
                label=label,
                geometry=geometry,
                attributes={a.get("name", ""): (a.text or "") for a in shape.findall("attribute")},
                occluded=shape.get("occluded", "0").strip() in ("1", "true", "True"),
                z_order=_int(shape.get("z_order"), "z_order", shape_where, default=0),
                group=_int(shape.get("group_id"), "group_id", shape_where, default=0) or None,
                source=shape.get("source", "manual"),
            )
        )
    return image


def _read_mask(el: ET.Element, where: str, image: ImageAnnotation, budget: list[int]) -> Mask:
    left = _int(el.get("left"), "left", where)
    top = _int(el.get("top"), "top", where)
    width = _int(el.get("width"), "width", where)
    height = _int(el.get("height"), "height", where)
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: mask size {width}x{height} is not positive")
    # CVAT crops a mask to the image: a larger one is hostile or broken (checked before decoding)
    if width > image.width or height > image.height:
        raise InputError(f"{where}: mask size {width}x{height} is larger than its "
                         f"{image.width}x{image.height} image")
    budget[0] -= width * height
    if budget[0] < 0:
        raise InputError(f"{where}: the file's masks add up to over {MAX_TOTAL_MASK_PIXELS // 10**6} "
                         "million pixels; export the task in parts")
    try:
        runs = masks.parse_runs(el.get("rle") or "", width * height)
        bitmap = masks.cvat_rle_decode(runs, width, height)
    except ValueError as exc:
        raise InputError(f"{where}: bad mask rle ({exc})") from None
    return Mask(bitmap=bitmap, left=left, top=top)


# --------------------------------------------------------------------------------------------
# writing


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def _points_text(points) -> str:
    return ";".join(f"{_fmt(x)},{_fmt(y)}" for x, y in points)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _meta(dataset: Dataset, task_name: str) -> ET.Element:
    meta = ET.Element("meta")
    task = _sub(meta, "task")
    _sub(task, "name", task_name)
    _sub(task, "size", str(len(dataset.images)))
    _sub(task, "mode", "annotation")
    labels_el = _sub(task, "labels")
    specs = dataset.labels or [LabelSpec(name=n) for n in dataset.label_names()]
    for spec in specs:
        label_el = _sub(labels_el, "label")
        _sub(label_el, "name", spec.name)
        if spec.color:
            _sub(label_el, "color", spec.color)
        _sub(label_el, "type", spec.type or "any")
        attrs_el = _sub(label_el, "attributes")
        for attr in spec.attributes:
            attr_el = _sub(attrs_el, "attribute")
            _sub(attr_el, "name", attr.name)
            _sub(attr_el, "mutable", "True" if attr.mutable else "False")
            _sub(attr_el, "input_type", attr.input_type)
            _sub(attr_el, "default_value", attr.default)
            _sub(attr_el, "values", "\n".join(attr.values))
    return meta


def to_cvat_xml(dataset: Dataset, task_name: str = "cvat-tools") -> bytes:
    """The XML document (UTF-8 bytes) of a dataset, CVAT for images 1.1."""
    root = ET.Element("annotations")
    _sub(root, "version", "1.1")
    root.append(_meta(dataset, task_name))
    for index, image in enumerate(dataset.images):
        image_el = _sub(root, "image", id=str(image.id if image.id is not None else index),
                        name=image.name, width=str(image.width), height=str(image.height))
        for inst in image.instances:
            attrib = {"label": inst.label, "source": inst.source or "manual",
                      "occluded": "1" if inst.occluded else "0"}
            geom = inst.geometry
            if isinstance(geom, Polygon):
                tag = "polygon"
                attrib["points"] = _points_text(geom.points)
            elif isinstance(geom, Points):
                tag = "points"
                attrib["points"] = _points_text(geom.points)
            elif isinstance(geom, Box):
                tag = "box"
                attrib.update(xtl=_fmt(geom.xtl), ytl=_fmt(geom.ytl), xbr=_fmt(geom.xbr), ybr=_fmt(geom.ybr))
            elif isinstance(geom, Mask):
                tag = "mask"
                # CVAT writes the runs as a Python list without brackets: "3, 5, 2"
                attrib["rle"] = ", ".join(str(v) for v in masks.cvat_rle_encode(geom.bitmap))
                attrib.update(left=str(geom.left), top=str(geom.top),
                              width=str(geom.width), height=str(geom.height))
            else:  # pragma: no cover - the model has no other geometry
                raise TypeError(f"unknown geometry {type(geom).__name__}")
            attrib["z_order"] = str(inst.z_order)
            if inst.group:
                attrib["group_id"] = str(inst.group)
            shape_el = _sub(image_el, tag, **attrib)
            for key, value in inst.attributes.items():
                _sub(shape_el, "attribute", str(value), name=key)
    ET.indent(root, space="  ")
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode").encode("utf-8") + b"\n"


def write_cvat_xml(dataset: Dataset, path: str | Path, task_name: str = "cvat-tools") -> Path:
    """Write ``annotations.xml`` for CVAT's "Upload annotations" (CVAT for images 1.1)."""
    path = Path(path)
    data = to_cvat_xml(dataset, task_name)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
