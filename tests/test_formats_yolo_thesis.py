"""Ultralytics YOLO segmentation (CVAT's export layout) and the thesis JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from cvat_tools.errors import InputError
from cvat_tools.formats.annotations import Box, Dataset, ImageAnnotation, Instance, Mask, Points, Polygon
from cvat_tools.formats.thesis_json import read_thesis_json, write_thesis_json
from cvat_tools.formats.yolo import read_yolo, write_yolo


def _png(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 180, 190)).save(path)
    return path


def test_yolo_writes_cvat_layout_and_reads_sizes_from_images(tmp_path):
    src = tmp_path / "src"
    _png(src / "f1.png", 40, 20)
    _png(src / "f2.png", 10, 10)
    bitmap = np.zeros((4, 4), bool)
    bitmap[1:3, 1:3] = True
    ds = Dataset(images=[
        ImageAnnotation("f1.png", 40, 20, [
            Instance("neutrophil", Polygon([(4.0, 2.0), (20.0, 2.0), (20.0, 10.0)])),
            Instance("monocyte", Box(0.0, 0.0, 10.0, 10.0)),
            Instance("monocyte", Mask(bitmap, 30, 10)),
            Instance("monocyte", Points([(1.0, 1.0)])),
        ]),
        ImageAnnotation("f2.png", 10, 10, []),
    ])
    out = write_yolo(ds, tmp_path / "yolo", images_dir=src)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {"names": {0: "neutrophil", 1: "monocyte"}, "path": ".", "train": "train.txt"}
    assert (out / "train.txt").read_text().split() == ["images/train/f1.png", "images/train/f2.png"]
    assert (out / "images/train/f1.png").is_file() and (out / "labels/train/f2.txt").read_text() == ""
    lines = (out / "labels/train/f1.txt").read_text().splitlines()
    assert lines[0] == "0 0.100000 0.100000 0.500000 0.100000 0.500000 0.500000"
    assert len(lines) == 3 and ds.skipped[-1]["reason"] == "no polygon for YOLO segmentation"

    back = read_yolo(out)  # sizes from images/train
    f1 = {im.name: im for im in back.images}["f1.png"]
    assert (f1.width, f1.height) == (40, 20)
    assert f1.instances[0].geometry == Polygon([(4.0, 2.0), (20.0, 2.0), (20.0, 10.0)])
    assert [i.label for i in f1.instances] == ["neutrophil", "monocyte", "monocyte"]
    mask_poly = f1.instances[2].geometry.points
    xs, ys = zip(*mask_poly)
    assert (min(xs), min(ys), max(xs), max(ys)) == (31.0, 11.0, 33.0, 13.0)


def test_yolo_reader_edge_cases(tmp_path):
    root = tmp_path / "y"
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text("names: [neutrophil, lymphocyte]\n")
    (root / "labels/train/a.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.1\n0 0.1 0.1 0.2 0.2 0.3\n\n")
    with pytest.raises(InputError, match=r"a\.txt.*pass --images"):
        read_yolo(root)
    _png(tmp_path / "imgs" / "a.jpg", 100, 50)
    ds = read_yolo(root / "data.yaml", images_dir=tmp_path / "imgs")
    (image,) = ds.images
    assert image.name == "a.jpg" and image.instances[0].geometry == Box(40.0, 15.0, 60.0, 35.0)
    assert len(image.instances) == 1  # a 4-number line is a box (cx cy w h)
    assert [s["reason"] for s in ds.skipped] == [f"{root / 'labels/train/a.txt'}:2: 2 coordinates is not a polygon",
                                                 f"{root / 'labels/train/a.txt'}:3: 5 coordinates is not a polygon"]
    (root / "labels/train/a.txt").write_text("7 0.1 0.1 0.2 0.2 0.3 0.1\n")
    with pytest.raises(InputError, match=r"a\.txt:1: class 7"):
        read_yolo(root, images_dir=tmp_path / "imgs")
    (root / "labels/train/a.txt").write_text("0 0.1 x 0.2 0.2 0.3 0.1\n")
    with pytest.raises(InputError, match=r"a\.txt:1"):
        read_yolo(root, images_dir=tmp_path / "imgs")
    (root / "data.yaml").write_text("nc: 2\n")
    with pytest.raises(InputError, match="no 'names'"):
        read_yolo(root)
    with pytest.raises(InputError, match="no data.yaml"):
        read_yolo(tmp_path / "imgs")


def test_thesis_json_round_trip_and_format(tmp_path):
    ds = Dataset(images=[ImageAnnotation("IMG_1.jpg", 4032, 3024, [
        Instance("neutrophil", Polygon([(10.5, 20.0), (30.0, 20.0), (30.0, 41.25)]), score=0.875, source="auto"),
        Instance("lymphocyte", Polygon([(1.0, 1.0), (5.0, 1.0), (5.0, 5.0)])),
    ])])
    path = write_thesis_json(ds, tmp_path / "pred.json")
    data = json.loads(path.read_text())
    cell = data["data"]["0"]["masks"][0]
    assert data["data"]["0"]["filename"] == "IMG_1.jpg" and data["data"]["0"]["height"] == 3024
    assert cell == {"class_name": "neutrophil", "score": 0.875,
                    "bounding_box": {"x1": 10.5, "x2": 30.0, "y1": 20.0, "y2": 41.25},
                    "vertices": [[10.5, 20.0], [30.0, 20.0], [30.0, 41.25]]}
    assert "score" not in data["data"]["0"]["masks"][1]
    back = read_thesis_json(path)
    assert [(i.label, i.score, i.geometry) for i in back.images[0].instances] == \
           [(i.label, i.score, i.geometry) for i in ds.images[0].instances]


def test_thesis_json_malformed(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"data": {"0": {"filename": "a.jpg"}}}))
    with pytest.raises(InputError, match=r"t\.json: data\['0'\]"):
        read_thesis_json(path)
    path.write_text(json.dumps({"data": {"0": {"filename": "a.jpg", "width": 5, "height": 5,
                                               "masks": [{"vertices": [[1, 1]]}]}}}))
    with pytest.raises(InputError, match="class_name"):
        read_thesis_json(path)
