"""COCO 1.0 instances: pycocotools reads what we write, we read what CVAT/pycocotools write."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from cvat_tools.errors import InputError
from cvat_tools.formats.annotations import Box, Dataset, ImageAnnotation, Instance, Mask, Polygon
from cvat_tools.formats.coco import read_coco, write_coco
from cvat_tools.formats.masks import mask_tight, mask_to_full, polygon_to_mask


def _dataset() -> Dataset:
    bitmap = np.zeros((5, 6), bool)
    bitmap[1:4, 2:5] = True
    bitmap[0, 0] = True
    return Dataset(images=[
        ImageAnnotation("a.jpg", 30, 20, [
            Instance("neutrophil", Polygon([(2.0, 2.0), (12.0, 2.0), (12.0, 9.0), (2.0, 9.0)]), score=0.9),
            Instance("lymphocyte", Mask(bitmap, left=20, top=10), occluded=True, z_order=2),
            Instance("lymphocyte", Box(1.0, 1.0, 4.0, 6.0)),
        ], id=11),
        ImageAnnotation("sub/b.jpg", 10, 10, [], id=12),
    ])


def test_pycocotools_reads_our_file_and_gets_our_masks(tmp_path):
    ds = _dataset()
    path = write_coco(ds, tmp_path / "instances_default.json")
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [11, 12]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["neutrophil", "lymphocyte"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[11]))
    assert len(anns) == 3
    poly_mask = coco.annToMask(anns[0]).astype(bool)
    np.testing.assert_array_equal(poly_mask, polygon_to_mask(ds.images[0].instances[0].geometry.points, 20, 30))
    assert anns[0]["area"] == 70 and anns[0]["bbox"] == [2.0, 2.0, 10.0, 7.0] and anns[0]["score"] == 0.9
    rle_mask = coco.annToMask(anns[1]).astype(bool)
    np.testing.assert_array_equal(rle_mask, mask_to_full(ds.images[0].instances[1].geometry, 30, 20))
    assert anns[1]["area"] == 10 and anns[1]["bbox"] == [20.0, 10.0, 5.0, 4.0]
    assert anns[1]["attributes"] == {"occluded": True, "z_order": 2}
    assert anns[2]["segmentation"] == [] and anns[2]["bbox"] == [1.0, 1.0, 3.0, 5.0]


def test_reads_back_what_it_writes(tmp_path):
    ds = _dataset()
    back = read_coco(write_coco(ds, tmp_path / "x.json"))
    assert [(im.name, im.width, im.height, im.id) for im in back.images] == [
        ("a.jpg", 30, 20, 11), ("sub/b.jpg", 10, 10, 12)]
    poly, mask, box = back.images[0].instances
    assert poly.geometry == ds.images[0].instances[0].geometry and poly.score == 0.9
    assert mask.geometry == mask_tight(ds.images[0].instances[1].geometry)  # read back tight
    assert mask.occluded and mask.z_order == 2
    assert box.geometry == Box(1.0, 1.0, 4.0, 6.0)


def test_uncompressed_rle_crowd_and_multi_polygon(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "c.png", "width": 4, "height": 3}],
        "categories": [{"id": 5, "name": "monocyte"}],
        "annotations": [
            # column-major runs: 3 zeros, then 2 ones (x=1, y=0..1), 7 zeros
            {"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 1,
             "segmentation": {"size": [3, 4], "counts": [3, 2, 7]}, "bbox": [1, 0, 1, 2]},
            {"id": 2, "image_id": 1, "category_id": 5, "iscrowd": 0,
             "segmentation": [[0, 0, 1, 0, 1, 1], [2, 2, 3, 2, 3, 3]], "bbox": [0, 0, 3, 3]},
        ],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    (image,) = read_coco(path).images
    crowd, first, second = image.instances
    assert crowd.geometry == Mask(np.array([[True], [True]]), left=1, top=1 - 1)
    assert crowd.attributes == {"iscrowd": "1"}
    assert first.group == second.group == 2  # one annotation, two polygons
    assert second.geometry == Polygon([(2.0, 2.0), (3.0, 2.0), (3.0, 3.0)])


@pytest.mark.parametrize("data, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"annotations": []}), "no 'images' list"),
    (json.dumps({"images": [{"id": 1}]}), "malformed images"),
    (json.dumps({"images": [{"id": 1, "file_name": "a", "width": 2, "height": 2}], "categories": [],
                 "annotations": [{"id": 1, "image_id": 9, "category_id": 1, "segmentation": []}]}), "image_id 9"),
    (json.dumps({"images": [{"id": 1, "file_name": "a", "width": 2, "height": 2}], "categories": [],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "segmentation": []}]}), "category_id 3"),
    (json.dumps({"images": [{"id": 1, "file_name": "a", "width": 2, "height": 2}],
                 "categories": [{"id": 1, "name": "x"}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                  "segmentation": {"size": [5, 5], "counts": "0"}}]}), "RLE size"),
    (json.dumps({"images": [{"id": 1, "file_name": "a", "width": 2, "height": 2}],
                 "categories": [{"id": 1, "name": "x"}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                  "segmentation": [[1, 2, 3]]}]}), "flat list"),
])
def test_malformed_coco_is_an_input_error_naming_the_file(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(data)
    with pytest.raises(InputError, match="bad.json") as info:
        read_coco(path)
    assert message in str(info.value)
