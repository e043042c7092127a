"""CVAT for images 1.1 XML: real files, CVAT's own export shape, hostile XML."""
from __future__ import annotations

import numpy as np
import pytest

from cvat_tools.errors import InputError
from cvat_tools.formats.annotations import Box, Dataset, ImageAnnotation, Instance, Mask, Points, Polygon
from cvat_tools.formats.coco import from_coco, to_coco
from cvat_tools.formats.cvat_xml import parse_cvat_xml, read_cvat_xml, to_cvat_xml, write_cvat_xml
from cvat_tools.labels import canonical
from hostile import BILLION_LAUGHS, EXTERNAL_ENTITY

# The ten RV-PBS files hold 63 <polygon> elements on 58 images (data/README.md says 59
# polygons; `grep -c "<polygon" *.xml` sums to 63, and every one is a valid polygon).
REAL_POLYGONS = 63
REAL_IMAGES = 58


def test_every_real_file_converts_to_coco_and_back(cvat_xml_dir):
    files = sorted(cvat_xml_dir.glob("*.xml"))
    assert len(files) == 10
    polygons = images = 0
    for path in files:
        original = read_cvat_xml(path)
        back = parse_cvat_xml(to_cvat_xml(from_coco(to_coco(original))), "round trip")
        assert [im.name for im in back.images] == [im.name for im in original.images]
        for a, b in zip(original.images, back.images):
            assert (a.width, a.height) == (b.width, b.height)
            assert [i.label for i in a.instances] == [i.label for i in b.instances]
            for ia, ib in zip(a.instances, b.instances):
                assert isinstance(ia.geometry, Polygon) and isinstance(ib.geometry, Polygon)
                pa, pb = np.asarray(ia.geometry.points), np.asarray(ib.geometry.points)
                assert pa.shape == pb.shape and pa.shape[0] >= 3
                assert np.abs(pa - pb).max() <= 0.01
                assert (ia.occluded, ia.z_order) == (ib.occluded, ib.z_order)
            polygons += len(a.instances)
            images += 1
        # every label of the real files is a project label
        assert all(canonical(label) == label for label in original.label_names())
    assert polygons == REAL_POLYGONS
    assert images == REAL_IMAGES


# What CVAT 2.x writes for a task export (trimmed): meta with labels and attributes, then
# images with every shape kind this project reads.
CVAT_EXPORT = b"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id>
      <name>smears</name>
      <size>1</size>
      <mode>annotation</mode>
      <labels>
        <label>
          <name>neutrophil</name>
          <color>#33ddff</color>
          <type>any</type>
          <attributes>
            <attribute>
              <name>stage</name>
              <mutable>False</mutable>
              <input_type>select</input_type>
              <default_value>segmented</default_value>
              <values>segmented
band</values>
            </attribute>
          </attributes>
        </label>
        <label>
          <name>lymphocyte</name>
          <color>#fa3253</color>
          <type>polygon</type>
          <attributes>
          </attributes>
        </label>
      </labels>
    </task>
    <dumped>2024-05-01 10:00:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="field/a.jpg" width="20" height="10">
    <polygon label="neutrophil" source="manual" occluded="1" points="1.00,1.00;5.50,1.00;5.50,4.25" z_order="2" group_id="3">
      <attribute name="stage">band</attribute>
    </polygon>
    <box label="lymphocyte" source="auto" occluded="0" xtl="2.00" ytl="3.00" xbr="8.50" ybr="9.00" z_order="0">
    </box>
    <mask label="lymphocyte" source="semi-auto" occluded="0" rle="2, 3, 1, 2" left="10" top="4" width="4" height="2" z_order="1">
    </mask>
    <points label="neutrophil" source="manual" occluded="0" points="3.00,4.00;6.00,7.00" z_order="0">
    </points>
    <polyline label="neutrophil" source="manual" occluded="0" points="1.00,1.00;2.00,2.00" z_order="0">
    </polyline>
  </image>
</annotations>
"""


def test_reads_a_full_cvat_export():
    ds = parse_cvat_xml(CVAT_EXPORT, "export.xml")
    assert [l.name for l in ds.labels] == ["neutrophil", "lymphocyte"]
    stage = ds.labels[0].attributes[0]
    assert (stage.name, stage.input_type, stage.values, stage.default, stage.mutable) == (
        "stage", "select", ["segmented", "band"], "segmented", False)
    assert ds.labels[1].type == "polygon" and ds.labels[0].color == "#33ddff"
    (image,) = ds.images
    assert (image.name, image.width, image.height, image.id) == ("field/a.jpg", 20, 10, 0)
    poly, box, mask, points = image.instances
    assert poly.geometry == Polygon([(1.0, 1.0), (5.5, 1.0), (5.5, 4.25)])
    assert (poly.occluded, poly.z_order, poly.group, poly.attributes) == (True, 2, 3, {"stage": "band"})
    assert box.geometry == Box(2.0, 3.0, 8.5, 9.0) and box.source == "auto"
    assert isinstance(mask.geometry, Mask) and (mask.geometry.left, mask.geometry.top) == (10, 4)
    np.testing.assert_array_equal(mask.geometry.bitmap, [[0, 0, 1, 1], [1, 0, 1, 1]])
    assert mask.source == "semi-auto" and mask.z_order == 1
    assert points.geometry == Points([(3.0, 4.0), (6.0, 7.0)])
    assert ds.skipped == [{"image": "field/a.jpg", "label": "neutrophil", "reason": "polyline is not supported"}]


def test_writer_output_reads_back_identically_and_has_cvat_meta(tmp_path):
    ds = parse_cvat_xml(CVAT_EXPORT, "export.xml")
    path = write_cvat_xml(ds, tmp_path / "annotations.xml")
    text = path.read_text()
    assert text.startswith('<?xml version="1.0" encoding="utf-8"?>')
    assert "<version>1.1</version>" in text and "<labels>" in text
    assert 'rle="2, 3, 1, 2"' in text  # CVAT's own spelling of the runs
    back = read_cvat_xml(path)
    assert [(l.name, l.attributes, l.color, l.type) for l in back.labels] == [
        (l.name, l.attributes, l.color, l.type) for l in ds.labels]
    assert back.images[0].instances == ds.images[0].instances


def test_stripped_form_without_meta():
    xml = b'<annotations><image id="5" name="x.jpg" width="10" height="10">' \
          b'<polygon label="Neutrophil" occluded="0" points="1,1;4,1;4,4"/></image></annotations>'
    ds = parse_cvat_xml(xml, "stripped.xml")
    assert ds.labels == [] and ds.label_names() == ["Neutrophil"]
    assert ds.images[0].id == 5 and ds.images[0].instances[0].source == "manual"


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "xxe"])
def test_entities_and_dtds_are_refused(tmp_path, data):
    path = tmp_path / "evil.xml"
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"evil\.xml.*refused"):
        read_cvat_xml(path)


@pytest.mark.parametrize("xml, message", [
    (b"<annotations><image", "not well-formed"),
    (b"<root/>", "not <annotations>"),
    (b'<annotations><image id="0" name="a.jpg" width="x" height="2"/></annotations>', "width='x'"),
    (b'<annotations><image id="0" name="a.jpg" width="2" height="2">'
     b'<polygon label="a" points="1,1;2;3,3"/></image></annotations>', "malformed point"),
    (b'<annotations><image id="0" name="a.jpg" width="4" height="4">'
     b'<mask label="a" rle="1, 2" left="0" top="0" width="2" height="2"/></image></annotations>', "bad mask rle"),
    (b'<annotations><image id="0" name="a.jpg" width="4" height="4">'
     b'<polygon label="a" points="1,1;nan,2;3,3"/></image></annotations>', "not a finite number"),
])
def test_malformed_xml_is_an_input_error_naming_the_file(xml, message):
    with pytest.raises(InputError, match="bad.xml") as info:
        parse_cvat_xml(xml, "bad.xml")
    assert message in str(info.value)


def test_degenerate_polygons_are_read_not_refused():
    xml = b'<annotations><image id="0" name="a.jpg" width="9" height="9">' \
          b'<polygon label="a" points="1,1;2,2"/>' \
          b'<polygon label="a" points="0,0;4,4;4,0;0,4"/></image></annotations>'
    ds = parse_cvat_xml(xml, "a.xml")
    assert [len(i.geometry.points) for i in ds.images[0].instances] == [2, 4]


def test_writer_declares_used_labels_when_none_declared():
    ds = Dataset(images=[ImageAnnotation("a.jpg", 8, 8, [Instance("monocyte", Polygon([(1, 1), (3, 1), (3, 3)]))])])
    back = parse_cvat_xml(to_cvat_xml(ds))
    assert [l.name for l in back.labels] == ["monocyte"]
