"""Datumaro 1.0 JSON: what CVAT writes reads right, and generated annotations survive
XML -> Datumaro -> XML and XML -> COCO -> XML exactly (hypothesis)."""
from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvat_tools.formats import detect_format, read_annotations
from cvat_tools.formats.annotations import AttributeSpec, Box, Dataset, LabelSpec, Mask, Points, Polygon
from cvat_tools.formats.coco import from_coco, to_coco
from cvat_tools.formats.cvat_xml import parse_cvat_xml, to_cvat_xml
from cvat_tools.formats.datumaro import from_datumaro, to_datumaro
from cvat_tools.formats.masks import coco_rle_encode
from test_convert import assert_same
from test_formats_roundtrip import LABELS, datasets

# What CVAT's "Datumaro 1.0" export holds for one frame (trimmed): typed attributes (checkbox
# true, number 3.0), occluded and rotation among them, a track's keys, a full-image COCO RLE.
_bits = np.zeros((6, 8), bool)
_bits[2:4, 3:6] = True
CVAT_DOC = {
    "info": {},
    "categories": {"label": {"labels": [{"name": "neutrophil", "parent": "", "attributes": ["stage", "lobes"]},
                                        {"name": "lymphocyte", "parent": "", "attributes": []}],
                             "attributes": ["occluded"]},
                   "points": {"items": []}},
    "items": [{"id": "field/a", "annotations": [
        {"id": 0, "type": "polygon", "attributes": {"occluded": True, "stage": True, "lobes": 3.0},
         "group": 2, "label_id": 0, "points": [1.0, 1.0, 5.5, 1.0, 5.5, 4.25], "z_order": 1},
        {"id": 1, "type": "bbox", "attributes": {"occluded": False, "rotation": 0.0, "source": "auto"},
         "group": 0, "label_id": 1, "bbox": [2.0, 3.0, 6.5, 2.0], "z_order": 0},
        {"id": 2, "type": "mask", "attributes": {"occluded": False, "track_id": 4, "keyframe": True},
         "group": 0, "label_id": 1, "rle": coco_rle_encode(_bits), "z_order": -1},
        {"id": 3, "type": "points", "attributes": {"occluded": False}, "group": 0, "label_id": 0,
         "points": [3.0, 4.0], "visibility": [2], "z_order": 0},
        {"id": 4, "type": "polyline", "attributes": {}, "group": 0, "label_id": 0, "points": [1, 1, 2, 2]},
    ], "attr": {"frame": 12}, "image": {"path": "field/a.jpg", "size": [6, 8]}}],
}


def test_reads_what_cvat_exports():
    ds = from_datumaro(json.loads(json.dumps(CVAT_DOC)), "default.json")
    assert [spec.name for spec in ds.labels] == ["neutrophil", "lymphocyte"]
    (image,) = ds.images
    assert (image.name, image.width, image.height, image.id) == ("field/a.jpg", 8, 6, 12)
    poly, box, mask, points = image.instances
    assert poly.geometry == Polygon([(1.0, 1.0), (5.5, 1.0), (5.5, 4.25)])
    assert (poly.label, poly.occluded, poly.z_order, poly.group) == ("neutrophil", True, 1, 2)
    assert poly.attributes == {"stage": "true", "lobes": "3"}  # CVAT's text for a checkbox and a number
    assert box.geometry == Box(2.0, 3.0, 8.5, 5.0) and box.source == "auto" and box.attributes == {}
    assert mask.geometry == Mask(_bits[2:4, 3:6], left=3, top=2) and mask.z_order == -1
    assert mask.attributes == {}  # track_id/keyframe are CVAT's, not the shape's
    assert points.geometry == Points([(3.0, 4.0)])
    assert ds.skipped == [{"image": "field/a.jpg", "label": "", "reason": "Datumaro polyline is not supported"}]


def test_upstream_datumaro_1_x_reads_too(tmp_path):
    doc = json.loads(json.dumps(CVAT_DOC))
    doc.pop("info")
    doc.update(dm_format_version="1.0", infos={}, media_type=2)
    folder = tmp_path / "export" / "annotations"
    folder.mkdir(parents=True)
    (folder / "default.json").write_text(json.dumps(doc))
    assert detect_format(tmp_path / "export") == ("datumaro", folder / "default.json")
    ds = read_annotations(tmp_path / "export")
    assert len(ds.images[0].instances) == 4


def test_written_layout_matches_cvat():
    doc = to_datumaro(from_datumaro(json.loads(json.dumps(CVAT_DOC)), "x"))
    item = doc["items"][0]
    assert (item["id"], item["image"], item["attr"]) == ("field/a", {"path": "field/a.jpg", "size": [6, 8]},
                                                         {"frame": 12})
    poly, box, mask, points = item["annotations"]
    assert poly["attributes"] == {"stage": "true", "lobes": "3", "occluded": True}
    assert box["bbox"] == [2.0, 3.0, 6.5, 2.0] and box["attributes"] == {"occluded": False, "source": "auto",
                                                                         "rotation": 0.0}
    assert mask["rle"] == coco_rle_encode(_bits)  # full-image compressed COCO RLE, as CVAT writes
    assert points["visibility"] == [2]
    assert doc["categories"]["label"]["labels"][0] == {"name": "neutrophil", "parent": "", "attributes": []}


# --- generated annotations ----------------------------------------------------------------------


@st.composite
def declared(draw):
    """datasets() plus CVAT label declarations (attribute specs, colours) for the labels used."""
    ds = draw(datasets())
    if draw(st.booleans()):
        ds.labels = [LabelSpec(name, type=draw(st.sampled_from(["any", "polygon", "mask"])),
                               color=draw(st.none() | st.sampled_from(["#33ddff", "#fa3253"])),
                               attributes=[AttributeSpec("stage", "select", ["a", "b c"], "a", draw(st.booleans())),
                                           AttributeSpec("note")])
                     for name in LABELS]
    return ds


COMMON = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _no_scores(ds: Dataset) -> Dataset:
    for image in ds.images:  # CVAT XML has no score: the XML round trips start without one
        for inst in image.instances:
            inst.score = None
    return ds


@COMMON
@given(declared())
def test_xml_datumaro_xml_is_exact(ds):
    xml = parse_cvat_xml(to_cvat_xml(_no_scores(ds)), "a.xml")
    through = from_datumaro(json.loads(json.dumps(to_datumaro(xml))), "default.json")
    assert_same(xml, parse_cvat_xml(to_cvat_xml(through), "b.xml"))


@COMMON
@given(declared())
def test_xml_coco_xml_is_exact_but_for_points(ds):
    xml = parse_cvat_xml(to_cvat_xml(_no_scores(ds)), "a.xml")
    through = from_coco(json.loads(json.dumps(to_coco(xml))), "instances.json")
    assert_same(xml, parse_cvat_xml(to_cvat_xml(through), "b.xml"), skip_points=True)
    n_points = sum(isinstance(i.geometry, Points) for im in xml.images for i in im.instances)
    assert sum("points" in s["reason"] for s in xml.skipped) == n_points


@COMMON
@given(declared())
def test_datumaro_keeps_scores_too(ds):
    back = from_datumaro(json.loads(json.dumps(to_datumaro(ds))), "default.json")
    assert [[i.score for i in im.instances] for im in back.images] == \
           [[i.score for i in im.instances] for im in ds.images]
    assert_same(ds, back, tol=1e-9)
