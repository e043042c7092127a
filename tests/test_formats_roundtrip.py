"""Random annotations through every writer and back through its reader (hypothesis)."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvat_tools.formats.annotations import Box, Dataset, ImageAnnotation, Instance, Mask, Points, Polygon
from cvat_tools.formats.coco import from_coco, to_coco
from cvat_tools.formats.cvat_xml import parse_cvat_xml, to_cvat_xml
from cvat_tools.formats.masks import mask_tight
from cvat_tools.formats.thesis_json import from_thesis_json, to_thesis_json
from cvat_tools.formats.yolo import read_yolo, write_yolo

LABELS = ["neutrophil", "band cell", "lymphocyte", "Odd label/ü"]


@st.composite
def instances(draw, width: int, height: int):
    kind = draw(st.sampled_from(["polygon", "mask", "box", "points"]))
    coord = lambda hi: st.floats(0, hi).map(lambda v: round(v, 2))  # noqa: E731 - CVAT keeps 2 decimals
    if kind == "polygon":
        n = draw(st.integers(3, 8))
        geom = Polygon([(draw(coord(width)), draw(coord(height))) for _ in range(n)])
    elif kind == "points":
        n = draw(st.integers(1, 4))
        geom = Points([(draw(coord(width)), draw(coord(height))) for _ in range(n)])
    elif kind == "box":
        x0, x1 = sorted([draw(coord(width)), draw(coord(width))])
        y0, y1 = sorted([draw(coord(height)), draw(coord(height))])
        geom = Box(x0, y0, x1, y1)
    else:
        w, h = draw(st.integers(1, min(width, 10))), draw(st.integers(1, min(height, 10)))
        left, top = draw(st.integers(0, width - w)), draw(st.integers(0, height - h))
        bits = draw(st.lists(st.booleans(), min_size=w * h, max_size=w * h))
        bitmap = np.array(bits, dtype=bool).reshape(h, w)
        bitmap[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
        geom = mask_tight(Mask(bitmap, left, top))
    return Instance(
        label=draw(st.sampled_from(LABELS)),
        geometry=geom,
        score=draw(st.none() | st.floats(0, 1)),
        attributes=draw(st.dictionaries(st.sampled_from(["stage", "note"]),
                                        st.text("abc xyz", max_size=5), max_size=2)),
        occluded=draw(st.booleans()),
        z_order=draw(st.integers(-3, 3)),
        group=draw(st.none() | st.integers(1, 9)),
        source=draw(st.sampled_from(["manual", "auto", "semi-auto"])),
    )


@st.composite
def datasets(draw):
    images = []
    for index in range(draw(st.integers(1, 3))):
        width, height = draw(st.integers(4, 40)), draw(st.integers(4, 40))
        insts = draw(st.lists(instances(width, height), max_size=4))
        images.append(ImageAnnotation(f"img_{index}.png", width, height, insts, id=index + 1))
    return Dataset(images=images)


def _same_points(a, b, tol):
    pa, pb = np.asarray(a, float), np.asarray(b, float)
    return pa.shape == pb.shape and (pa.size == 0 or np.abs(pa - pb).max() <= tol)


COMMON = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(datasets())
def test_cvat_xml_round_trip(ds):
    back = parse_cvat_xml(to_cvat_xml(ds), "random.xml")
    assert [(i.name, i.width, i.height, i.id) for i in back.images] == \
           [(i.name, i.width, i.height, i.id) for i in ds.images]
    for a, b in zip(ds.images, back.images):
        assert len(a.instances) == len(b.instances)
        for x, y in zip(a.instances, b.instances):
            assert (x.label, x.occluded, x.z_order, x.group, x.source, x.attributes) == \
                   (y.label, y.occluded, y.z_order, y.group, y.source, y.attributes)
            if isinstance(x.geometry, (Polygon, Points)):
                assert type(x.geometry) is type(y.geometry)
                assert _same_points(x.geometry.points, y.geometry.points, 0.005)
            else:
                assert x.geometry == y.geometry


@COMMON
@given(datasets())
def test_coco_round_trip(ds):
    back = from_coco(to_coco(ds), "random.json")
    assert [(i.name, i.width, i.height) for i in back.images] == [(i.name, i.width, i.height) for i in ds.images]
    for a, b in zip(ds.images, back.images):
        expected = [x for x in a.instances if not isinstance(x.geometry, Points)]
        assert len(expected) == len(b.instances)
        for x, y in zip(expected, b.instances):
            assert (x.label, x.occluded, x.z_order, x.group, x.score, x.attributes) == \
                   (y.label, y.occluded, y.z_order, y.group, y.score, y.attributes)
            if isinstance(x.geometry, Polygon):
                assert _same_points(x.geometry.points, y.geometry.points, 1e-4)
            elif isinstance(x.geometry, Box) and (x.geometry.xbr - x.geometry.xtl) * (x.geometry.ybr - x.geometry.ytl) > 0:
                assert isinstance(y.geometry, Box)
                assert _same_points([x.geometry.xtl, x.geometry.ytl, x.geometry.xbr, x.geometry.ybr],
                                    [y.geometry.xtl, y.geometry.ytl, y.geometry.xbr, y.geometry.ybr], 1e-3)
            elif isinstance(x.geometry, Mask):
                assert x.geometry == y.geometry
    n_points = sum(isinstance(x.geometry, Points) for im in ds.images for x in im.instances)
    assert sum("points" in s["reason"] for s in ds.skipped) == n_points


@COMMON
@given(datasets())
def test_thesis_json_round_trip(ds):
    back = from_thesis_json(to_thesis_json(ds), "random.json")
    for a, b in zip(ds.images, back.images):
        assert (a.name, a.width, a.height) == (b.name, b.width, b.height)
        outlined = [x for x in a.instances if not isinstance(x.geometry, Points)]
        assert [x.label for x in outlined] == [y.label for y in b.instances]
        assert [x.score for x in outlined] == [y.score for y in b.instances]
        for x, y in zip(outlined, b.instances):
            if isinstance(x.geometry, Polygon):
                assert _same_points(x.geometry.points, y.geometry.points, 1e-9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(datasets())
def test_yolo_round_trip(tmp_path_factory, ds):
    folder = tmp_path_factory.mktemp("yolo") / "export"
    write_yolo(ds, folder)
    assert (folder / "data.yaml").is_file() and (folder / "train.txt").is_file()
    sizes = {im.name: (im.width, im.height) for im in ds.images}
    back = read_yolo(folder, sizes=sizes)
    by_name = {im.name: im for im in back.images}
    for a in ds.images:
        b = by_name[a.name]
        kept = [x for x in a.instances if not isinstance(x.geometry, Points)]
        assert [x.label for x in kept] == [y.label for y in b.instances]
        for x, y in zip(kept, b.instances):
            assert isinstance(y.geometry, Polygon)
            if isinstance(x.geometry, Polygon):  # normalized to 6 decimals of a <= 40 px side
                assert _same_points(x.geometry.points, y.geometry.points, 40e-6)
