"""``cvat-tools convert``: real CVAT XML through Datumaro and COCO and back exactly, layouts
with and without images, what each target format loses, and hostile inputs."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import hostile
from cli_run import run_cli
from cvat_tools.formats.annotations import (Box, Dataset, ImageAnnotation, Instance, LabelSpec, Mask, Points,
                                            Polygon)
from cvat_tools.formats.cvat_xml import read_cvat_xml, to_cvat_xml
from cvat_tools.formats.masks import mask_to_full
from test_hostile_formats import snapshot

REAL_POLYGONS, REAL_IMAGES = 63, 58  # tests/test_formats_cvat_xml.py counts them


def assert_same(a: Dataset, b: Dataset, tol: float = 0.01, skip_points: bool = False) -> None:
    """Images (name, size, id), labels declared and used, and every shape's geometry (vertices
    within ``tol`` px, masks pixel for pixel), label, attributes, z_order, occluded, group, source."""
    assert [(i.name, i.width, i.height, i.id) for i in a.images] == \
           [(i.name, i.width, i.height, i.id) for i in b.images]
    assert a.label_names() == b.label_names()
    # no declarations (the real files have no <meta>) means the used labels, plain: as CVAT reads it
    specs = lambda ds: [(s.name, s.attributes, s.color, s.type)  # noqa: E731
                        for s in ds.labels or [LabelSpec(n) for n in ds.label_names()]]
    assert specs(a) == specs(b)
    for ia, ib in zip(a.images, b.images):
        kept = [x for x in ia.instances if not (skip_points and isinstance(x.geometry, Points))]
        assert len(kept) == len(ib.instances), ia.name
        for x, y in zip(kept, ib.instances):
            assert (x.label, x.attributes, x.z_order, x.occluded, x.group, x.source) == \
                   (y.label, y.attributes, y.z_order, y.occluded, y.group, y.source)
            gx, gy = x.geometry, y.geometry
            assert type(gx) is type(gy)
            if isinstance(gx, Mask):
                np.testing.assert_array_equal(mask_to_full(gx, ia.width, ia.height),
                                              mask_to_full(gy, ia.width, ia.height))
            elif isinstance(gx, Box):
                assert np.abs(np.subtract([gx.xtl, gx.ytl, gx.xbr, gx.ybr], [gy.xtl, gy.ytl, gy.xbr, gy.ybr])).max() <= tol
            else:
                pa, pb = np.asarray(gx.points, float), np.asarray(gy.points, float)
                assert pa.shape == pb.shape and (pa.size == 0 or np.abs(pa - pb).max() <= tol)


def _convert(*args) -> str:
    code, stdout, stderr = run_cli("convert", *args)
    assert code == 0, stderr
    return stderr


# --- real files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["datumaro", "coco"])
def test_every_real_xml_file_round_trips_exactly_through_the_cli(cvat_xml_dir, tmp_path, via):
    files = sorted(cvat_xml_dir.glob("*.xml"))
    assert len(files) == 10
    polygons = images = 0
    for path in files:
        middle, back = tmp_path / f"{path.stem}_{via}", tmp_path / f"{path.stem}_back"
        assert _convert(path, "--to", via, "--out", middle) == ""  # nothing lost, nothing said
        _convert(middle, "--to", "cvat", "--out", back)
        original, again = read_cvat_xml(path), read_cvat_xml(back / "annotations.xml")
        assert_same(original, again)
        _convert(path, "--to", "cvat", "--out", tmp_path / f"{path.stem}_direct")
        assert (back / "annotations.xml").read_bytes() == \
               (tmp_path / f"{path.stem}_direct" / "annotations.xml").read_bytes()
        polygons += sum(len(im.instances) for im in again.images)
        images += len(again.images)
    assert (polygons, images) == (REAL_POLYGONS, REAL_IMAGES)


def test_all_real_files_at_once_to_a_cvat_importable_datumaro_layout(cvat_xml_dir, tmp_path):
    files = sorted(cvat_xml_dir.glob("*.xml"))
    out = tmp_path / "dm"
    code, stdout, stderr = run_cli("convert", *files, "--to", "datumaro", "--out", out)
    assert code == 0, stderr
    assert f"converted {REAL_POLYGONS} shapes on {REAL_IMAGES} images to datumaro (annotations only)" in stdout
    doc = json.loads((out / "annotations" / "default.json").read_text())
    assert len(doc["items"]) == REAL_IMAGES
    item = doc["items"][0]
    assert item["image"]["size"] == [3024, 4032] and item["image"]["path"].endswith(".jpg")
    assert item["id"] == item["image"]["path"].rsplit(".", 1)[0]  # CVAT's id: the name without extension
    ann = item["annotations"][0]
    assert ann["type"] == "polygon" and ann["attributes"] == {"occluded": False} and ann["z_order"] == 0
    names = [label["name"] for label in doc["categories"]["label"]["labels"]]
    assert names[ann["label_id"]] in {"band cell", "basophil", "blast cell", "eosinophil", "lymphocyte",
                                      "metamyelocyte", "monocyte", "myelocyte", "neutrophil", "promyelocyte"}
    assert not (out / "images").exists()  # annotations only


# --- layouts with images -----------------------------------------------------------------------


def _dataset() -> Dataset:
    bitmap = np.zeros((4, 5), bool)
    bitmap[1:3, 1:4] = True
    return Dataset(images=[
        ImageAnnotation("sub/a.png", 20, 12, [
            Instance("neutrophil", Polygon([(1, 1), (9, 1), (9, 8)]), attributes={"stage": "band"},
                     occluded=True, z_order=2, group=1),
            Instance("lymphocyte", Box(2, 3, 10, 11), source="auto"),
            Instance("monocyte", Mask(bitmap, left=10, top=2)),
            Instance("neutrophil", Points([(3, 4)]))], id=7),
        ImageAnnotation("b.png", 16, 10, [], id=8)])


@pytest.fixture
def task(tmp_path) -> tuple[Path, Path]:
    """A CVAT XML of _dataset() and a folder holding its two images (sub/a.png nested)."""
    images = tmp_path / "pictures"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 12), (200, 100, 150)).save(images / "sub" / "a.png")
    Image.new("RGB", (16, 10), (200, 100, 150)).save(images / "b.png")
    xml = tmp_path / "task.xml"
    xml.write_bytes(to_cvat_xml(_dataset()))
    return xml, images


@pytest.mark.parametrize("target, annotation_file, image_folder", [
    ("cvat", "annotations.xml", "images"),
    ("coco", "annotations/instances_default.json", "images"),
    ("datumaro", "annotations/default.json", "images/default"),
    ("json", "annotations.json", "images"),
])
def test_images_are_written_where_cvat_expects_them(task, tmp_path, target, annotation_file, image_folder):
    xml, images = task
    out = tmp_path / "out"
    _convert(xml, "--to", target, "--images", images, "--out", out)
    assert (out / annotation_file).is_file()
    assert (out / image_folder / "sub" / "a.png").is_file() and (out / image_folder / "b.png").is_file()
    # the output reads back as its format, images included (export finds them in the folder)
    code, _, stderr = run_cli("export", out, "--out", tmp_path / "train")
    assert code == 0, stderr


def test_yolo_writes_and_lists_only_images_that_exist(task, tmp_path):
    xml, images = task
    with_images, without = tmp_path / "with", tmp_path / "without"
    _convert(xml, "--to", "yolo", "--images", images, "--out", with_images)
    listed = (with_images / "train.txt").read_text().split()
    assert listed == ["images/train/a.png", "images/train/b.png"]
    assert all((with_images / p).is_file() for p in listed)
    assert yaml.safe_load((with_images / "data.yaml").read_text())["train"] == "train.txt"
    stderr = _convert(xml, "--to", "yolo", "--out", without)
    assert (without / "train.txt").read_text() == "" and not list((without / "images" / "train").iterdir())
    assert "train.txt lists none" in stderr
    assert sorted(p.name for p in (without / "labels" / "train").iterdir()) == ["a.txt", "b.txt"]


def test_convert_says_what_the_target_cannot_hold(task, tmp_path):
    xml, _ = task
    stderr = _convert(xml, "--to", "yolo", "--out", tmp_path / "yolo")
    assert "warning: yolo cannot hold: attributes (1 shape), occluded (1 shape), z_order (1 shape), " \
           "group (1 shape), source (1 shape), boxes become polygons (1 shape), masks become traced " \
           "polygons (1 shape)" in stderr
    assert "no polygon for YOLO segmentation" in stderr  # the point shape, left out and listed
    stderr = _convert(xml, "--to", "coco", "--out", tmp_path / "coco")
    assert "cannot hold" not in stderr and "points have no COCO instance form" in stderr
    assert _convert(xml, "--to", "datumaro", "--out", tmp_path / "dm") == ""


def test_everything_survives_datumaro_and_coco(task, tmp_path):
    xml, _ = task
    original = read_cvat_xml(xml)
    for via in ("datumaro", "coco"):
        _convert(xml, "--to", via, "--out", tmp_path / via)
        _convert(tmp_path / via, "--to", "cvat", "--out", tmp_path / f"{via}_back")
        assert_same(original, read_cvat_xml(tmp_path / f"{via}_back" / "annotations.xml"),
                    skip_points=via == "coco")


def test_missing_image_and_clashing_names_and_foreign_out(task, tmp_path):
    xml, images = task
    (images / "b.png").unlink()
    code, _, stderr = run_cli("convert", xml, "--to", "cvat", "--images", images, "--out", tmp_path / "o")
    assert code == 2 and "1 annotated image(s) not found: 'b.png'" in stderr and not (tmp_path / "o").exists()
    twin = tmp_path / "twin.xml"
    twin.write_bytes(xml.read_bytes())
    code, _, stderr = run_cli("convert", xml, twin, "--to", "coco", "--out", tmp_path / "o")
    assert code == 2 and str(xml) in stderr and str(twin) in stderr and "'sub/a.png'" in stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, stderr = run_cli("convert", xml, "--to", "coco", "--out", mine)
    assert code == 2 and "was not written by 'cvat-tools convert'" in stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_two_inputs_are_merged(cvat_xml_dir, tmp_path):
    a, b = cvat_xml_dir / "BASOPHILS.xml", cvat_xml_dir / "MONOCYTES.xml"
    _convert(a, b, "--to", "cvat", "--out", tmp_path / "both")
    both = read_cvat_xml(tmp_path / "both" / "annotations.xml")
    first, second = read_cvat_xml(a), read_cvat_xml(b)
    assert [im.name for im in both.images] == [im.name for im in first.images + second.images]
    assert both.label_names() == ["basophil", "monocyte"]


# --- hostile inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(set(hostile.REFUSED) - {"label_map_alias_bomb"}))  # no --label-map
def test_hostile_input_is_refused_by_convert_in_one_line(case, tmp_path, monkeypatch):
    build, expected = hostile.REFUSED[case]
    monkeypatch.chdir(tmp_path)
    args = build(tmp_path)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    code, _, stderr = run_cli("convert", *args, "--to", "datumaro", "--out", out)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (case, stderr[-2000:])
    assert expected in lines[0] and len(lines[0]) < 1000, (case, lines[0][:1000])
    assert not out.exists() and snapshot(tmp_path) == before


def test_zip_climbing_out_is_refused_and_nothing_is_written(tmp_path):
    archive = tmp_path / "task.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", to_cvat_xml(_dataset()))
        zf.writestr("../../evil.png", b"x")
    before = snapshot(tmp_path)
    code, _, stderr = run_cli("convert", archive, "--to", "coco", "--out", tmp_path / "out")
    assert code == 2 and "points outside the archive" in stderr and len(stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before and not (tmp_path.parent / "evil.png").exists()


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.pop("categories"), "not a Datumaro JSON file"),
    (lambda d: d["items"][0].pop("id"), "'id' must be a non-empty text"),
    (lambda d: d["items"][0]["annotations"][0].update(points="1,1,6,1"), "'points' must be a flat list"),
    (lambda d: d["items"][0]["annotations"][0].update(label_id=5), "label_id 5 is not in categories"),
    (lambda d: d["items"][0]["annotations"][0].update(type="blob"), "unknown annotation type 'blob'"),
    (lambda d: d["items"][0]["annotations"][0].update(z_order=1.5), "z_order must be a whole number"),
    (lambda d: d["items"][0]["annotations"][0]["attributes"].update(occluded="maybe"), "occluded must be true or false"),
    (lambda d: d["items"][0]["annotations"][0]["attributes"].update(stage=[1]), "attribute 'stage' must be text"),
    (lambda d: d["items"][0]["image"].update(size=[8, 9000 * 9000]), "64 MP limit"),
    (lambda d: d.update(dm_format_version="2.0"), "version '2.0' is not supported"),
    (lambda d: d["items"][0]["annotations"].append(
        {"type": "mask", "label_id": 0, "rle": {"counts": "0", "size": [4, 4]}}), "is not the image's [8, 8]"),
])
def test_malformed_datumaro_is_one_clear_line(tmp_path, mutate, expected):
    ann = {"id": 0, "type": "polygon", "label_id": 0, "points": [1, 1, 6, 1, 6, 6], "attributes": {}}
    doc = hostile.datumaro_doc([ann])
    mutate(doc)
    path = tmp_path / "default.json"
    path.write_text(json.dumps(doc))
    code, _, stderr = run_cli("convert", path, "--format", "datumaro", "--to", "cvat", "--out", tmp_path / "out")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}"), stderr
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_yolo_keeps_two_images_of_the_same_base_name_apart(tmp_path):
    ds = Dataset(images=[ImageAnnotation(f"{folder}/a.png", 10, 10, [Instance(label, Polygon([(1, 1), (8, 1), (8, 8)]))])
                         for folder, label in (("left", "monocyte"), ("right", "lymphocyte"))])
    (tmp_path / "t.xml").write_bytes(to_cvat_xml(ds))
    _convert(tmp_path / "t.xml", "--to", "yolo", "--out", tmp_path / "y")
    labels = {p.name: p.read_text().split()[0] for p in (tmp_path / "y" / "labels" / "train").iterdir()}
    names = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())["names"]
    assert {n: names[int(c)] for n, c in labels.items()} == {"left__a.txt": "monocyte", "right__a.txt": "lymphocyte"}


def test_scores_are_kept_by_datumaro_and_their_loss_in_cvat_xml_is_said(tmp_path):
    from cvat_tools.formats import detect_format

    ann = {"id": 0, "type": "polygon", "label_id": 0, "points": [1, 1, 6, 1, 6, 6],
           "attributes": {"occluded": False, "score": 0.75, "source": "auto"}}
    path = tmp_path / "predicted.json"
    path.write_text(json.dumps(hostile.datumaro_doc([ann])))
    assert detect_format(path) == ("datumaro", path)
    stderr = _convert(path, "--to", "cvat", "--out", tmp_path / "xml")
    assert "warning: cvat cannot hold: score (1 shape)" in stderr
    assert _convert(path, "--to", "datumaro", "--out", tmp_path / "dm") == ""
    doc = json.loads((tmp_path / "dm" / "annotations" / "default.json").read_text())
    assert doc["items"][0]["annotations"][0]["attributes"] == {"occluded": False, "source": "auto", "score": 0.75}
    stderr = _convert(path, "--to", "json", "--out", tmp_path / "thesis")
    assert "cannot hold: source (1 shape)" in stderr and "score" not in stderr
