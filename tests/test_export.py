"""``cvat-tools export``: a real BCCD case end to end, and every kind of bad input through the CLI."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from cvat_tools.formats.annotations import Dataset, ImageAnnotation, Instance, Polygon
from cvat_tools.formats.cvat_xml import to_cvat_xml
from cvat_tools.formats.masks import mask_to_polygon
from cli_run import run_cli
from hostile import BILLION_LAUGHS, EXTERNAL_ENTITY

BCCD_CASES = [("BloodImage_00000", "NEUTROPHILS"), ("BloodImage_00004", "Neutrophils"),
              ("BloodImage_00013", "Lymphocyte")]




@pytest.fixture(scope="module")
def bccd_case(bccd_dir, tmp_path_factory):
    """A CVAT XML with one polygon per WBC (one connected component of mask > 0) of 3 BCCD images."""
    root = tmp_path_factory.mktemp("bccd")
    ds = Dataset()
    truth = {}
    for index, (stem, label) in enumerate(BCCD_CASES):
        mask = np.asarray(Image.open(bccd_dir / "masks" / f"{stem}.png")) > 0
        count, components = cv2.connectedComponents(mask.astype(np.uint8))
        image = ImageAnnotation(f"{stem}.jpg", mask.shape[1], mask.shape[0], id=index)
        for c in range(1, count):
            cell = components == c
            image.instances.append(Instance(label, Polygon(mask_to_polygon(cell))))
            truth[(stem, c - 1)] = cell
        ds.images.append(image)
    xml = root / "annotations.xml"
    xml.write_bytes(to_cvat_xml(ds))
    return xml, bccd_dir / "images", truth


def test_export_bccd_with_crops(bccd_case, tmp_path):
    xml, images, truth = bccd_case
    out = tmp_path / "train"
    code, stdout, stderr = run_cli("export", xml, "--images", images, "--out", out, "--crops", "--crop-size", "64")
    assert code == 0, stderr
    assert f"exported {len(truth)} cells from 3 images" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    n_lymph = sum(1 for (stem, _) in truth if stem == "BloodImage_00013")
    assert manifest["per_class"] == {"lymphocyte": n_lymph, "neutrophil": len(truth) - n_lymph}
    assert manifest["images"] == 3 and manifest["instances"] == len(truth)
    assert manifest["skipped"] == [] and manifest["source"] == str(xml) and manifest["format"] == "cvat"
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{s}.jpg" for s, _ in BCCD_CASES]

    coco = COCO(str(out / "annotations.json"))
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"neutrophil", "lymphocyte"}
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]
        stem = Path(image["file_name"]).stem
        k = int(Path(ann["mask_file"]).stem.rsplit("_", 1)[1])
        png = np.asarray(Image.open(out / ann["mask_file"]))
        assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
        cell = truth[(stem, k)]
        iou = ((png > 0) & cell).sum() / ((png > 0) | cell).sum()
        assert iou > 0.97, (stem, k, iou)  # polygon simplified at 1 px
        from_polygon = coco.annToMask(ann).astype(bool)  # what a COCO training loader sees
        assert (from_polygon & (png > 0)).sum() / (from_polygon | (png > 0)).sum() > 0.98
        assert ann["area"] == int((png > 0).sum())
        label = coco.loadCats(ann["category_id"])[0]["name"]
        crop = np.asarray(Image.open(out / "crops" / label / f"{stem}_{k}.png"))
        assert crop.shape == (64, 64, 3)
        assert tuple(crop[0, 0]) == (128, 128, 128)  # masked background, crops.cell_crop's grey
        assert ann["source_label"] in ("NEUTROPHILS", "Neutrophils", "Lymphocyte")


def test_export_from_a_cvat_zip_uses_its_images(tmp_path):
    rng = np.random.default_rng(0)
    image_path = tmp_path / "src.png"
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(image_path)
    ds = Dataset(images=[ImageAnnotation("f.png", 40, 30, [Instance("monocyte", Polygon([(5, 5), (25, 5), (25, 20), (5, 20)]))])])
    archive = tmp_path / "task_export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", to_cvat_xml(ds))
        zf.write(image_path, "images/f.png")
    code, _, stderr = run_cli("export", archive, "--out", tmp_path / "out")
    assert code == 0, stderr
    assert (tmp_path / "out" / "images" / "f.png").is_file()
    png = np.asarray(Image.open(tmp_path / "out" / "masks" / "f_0.png"))
    assert (png > 0).sum() == 20 * 15 and png[5:20, 5:25].all()


# --- bad input: exit != 0, message names the file, no output folder ---------------------------


def _image(path: Path, width: int = 40, height: int = 30, exif_orientation: int | None = None) -> Path:
    img = Image.new("RGB", (width, height), (210, 190, 200))
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(path, exif=exif.tobytes())
    else:
        img.save(path)
    return path


def _xml(path: Path, *shapes: str, name: str = "a.jpg", width: int = 40, height: int = 30) -> Path:
    body = "".join(shapes)
    path.write_text(f'<annotations><image id="0" name="{name}" width="{width}" height="{height}">'
                    f"{body}</image></annotations>")
    return path


SQUARE = '<polygon label="neutrophil" occluded="0" points="5,5;20,5;20,20;5,20"/>'
TWO_POINTS = '<polygon label="neutrophil" occluded="0" points="5,5;20,20"/>'
BOWTIE = '<polygon label="lymphocyte" occluded="0" points="2,2;12,12;12,2;2,12"/>'


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    _image(folder / "a.jpg")
    return folder


def _expect_failure(args, must_name: str | Path, out: Path, *more: str) -> str:
    code, _, stderr = run_cli(*args)
    assert code != 0
    assert str(must_name) in stderr, stderr
    assert "Traceback" not in stderr
    for text in more:
        assert text in stderr, stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp left
    return stderr


def test_billion_laughs(tmp_path, images):
    xml = tmp_path / "lol.xml"
    xml.write_bytes(BILLION_LAUGHS)
    out = tmp_path / "out"
    _expect_failure(["export", xml, "--images", images, "--out", out], xml, out, "refused")


def test_external_entity(tmp_path, images):
    xml = tmp_path / "xxe.xml"
    xml.write_bytes(EXTERNAL_ENTITY)
    out = tmp_path / "out"
    _expect_failure(["export", xml, "--images", images, "--out", out], xml, out, "refused")


def test_zip_with_parent_member(tmp_path, images):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", _xml(tmp_path / "x.xml", SQUARE).read_bytes())
        zf.writestr("../../escaped.txt", b"gotcha")
    out = tmp_path / "out"
    _expect_failure(["export", archive, "--images", images, "--out", out], archive, out, "outside the archive")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_zip_bomb(tmp_path, images):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations.xml", _xml(tmp_path / "x.xml", SQUARE).read_bytes())
        zf.writestr("images/zeros.bin", bytes(32 * 1024 * 1024))
    out = tmp_path / "out"
    _expect_failure(["export", archive, "--images", images, "--out", out], archive, out, "zip bomb")


def test_missing_image(tmp_path, images):
    xml = _xml(tmp_path / "a.xml", SQUARE, name="nowhere.jpg")
    out = tmp_path / "out"
    _expect_failure(["export", xml, "--images", images, "--out", out], xml, out, "nowhere.jpg", "--images")


def test_size_mismatch(tmp_path, images):
    xml = _xml(tmp_path / "a.xml", SQUARE, width=400, height=300)
    out = tmp_path / "out"
    _expect_failure(["export", xml, "--images", images, "--out", out], images / "a.jpg", out,
                    "is 40x30, annotated as 400x300")


def test_size_after_exif_rotation(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _image(folder / "a.jpg", 40, 30, exif_orientation=6)  # displayed 30 wide, 40 high
    xml = _xml(tmp_path / "a.xml", SQUARE)  # annotated on the raw 40x30 pixels
    out = tmp_path / "out"
    _expect_failure(["export", xml, "--images", folder, "--out", out], folder / "a.jpg", out,
                    "is 30x40, annotated as 40x30")
    rotated = _xml(tmp_path / "b.xml", SQUARE, width=30, height=40)
    code, _, stderr = run_cli("export", rotated, "--images", folder, "--out", out)
    assert code == 0, stderr


def test_unknown_label(tmp_path, images):
    xml = _xml(tmp_path / "a.xml", SQUARE.replace("neutrophil", "RBC"))
    out = tmp_path / "out"
    _expect_failure(["export", xml, "--images", images, "--out", out], xml, out, "'RBC'", "--label-map")
    label_map = tmp_path / "map.yaml"
    label_map.write_text("RBC: neutrophil\n")
    code, _, stderr = run_cli("export", xml, "--images", images, "--out", out, "--label-map", label_map)
    assert code == 0, stderr
    assert json.loads((out / "manifest.json").read_text())["per_class"] == {"neutrophil": 1}


def test_two_point_and_bowtie_polygons_are_reported_not_fatal(tmp_path, images):
    xml = _xml(tmp_path / "a.xml", SQUARE, TWO_POINTS, BOWTIE)
    out = tmp_path / "out"
    code, _, stderr = run_cli("export", xml, "--images", images, "--out", out)
    assert code == 0, stderr
    assert "1 shape(s) skipped" in stderr and "a.jpg: neutrophil: polygon with 2 point(s)" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["instances"] == 2 and manifest["per_class"] == {"lymphocyte": 1, "neutrophil": 1}
    assert manifest["skipped"] == [{"image": "a.jpg", "label": "neutrophil",
                                    "reason": "polygon with 2 point(s); a cell outline needs at least 3"}]
    assert manifest["repaired"][0]["note"].startswith("self-intersecting polygon split into 2 pieces")
    bowtie_mask = np.asarray(Image.open(out / "masks" / "a_1.png")) > 0
    # one 25 px² triangle (2,2)-(7,7)-(2,12); centres on its 45° edges fall outside (half-open rule)
    assert bowtie_mask.sum() == 20 and bowtie_mask[2:12, 2:7].sum() == 20


def test_strict_turns_skips_into_errors(tmp_path, images):
    xml = _xml(tmp_path / "a.xml", SQUARE, TWO_POINTS, BOWTIE)
    out = tmp_path / "out"
    _expect_failure(["export", xml, "--images", images, "--out", out, "--strict"], xml, out,
                    "polygon with 2 point(s)", "self-intersecting")


def test_out_folder_rules(tmp_path, images):
    xml = _xml(tmp_path / "a.xml", SQUARE)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.docx").write_text("years of work")
    code, _, stderr = run_cli("export", xml, "--images", images, "--out", precious)
    assert code != 0 and "was not written by 'cvat-tools export'" in stderr
    assert (precious / "thesis.docx").read_text() == "years of work"
    out = tmp_path / "out"
    assert run_cli("export", xml, "--images", images, "--out", out)[0] == 0
    assert run_cli("export", xml, "--images", images, "--out", out)[0] == 0  # an export is replaced
    code, _, stderr = run_cli("export", xml, "--images", images, "--out", images / "sub")
    assert code != 0 and "overlaps the input" in stderr


def test_installed_entry_point_exit_code(tmp_path, images):
    """The same failure through ``python -m cvat_tools.cli``: exit 2, one line, no traceback."""
    import subprocess
    import sys

    xml = _xml(tmp_path / "a.xml", SQUARE, name="nowhere.jpg")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "cvat_tools.cli", "export", str(xml), "--images", str(images),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {xml}: 1 annotated image(s) not found")
    assert "Traceback" not in proc.stderr and not out.exists()


def test_bitmap_mask_with_two_parts(tmp_path, images):
    from cvat_tools.formats.masks import cvat_rle_encode

    bitmap = np.zeros((6, 12), bool)
    bitmap[0:4, 0:4] = True
    bitmap[2:6, 7:12] = True
    rle = ", ".join(map(str, cvat_rle_encode(bitmap)))
    xml = _xml(tmp_path / "m.xml", f'<mask label="monocyte" occluded="0" rle="{rle}" left="10" top="8" '
                                   'width="12" height="6" z_order="0"/>')
    out = tmp_path / "out"
    code, _, stderr = run_cli("export", xml, "--images", images, "--out", out)
    assert code == 0, stderr
    coco = COCO(str(out / "annotations.json"))
    (ann,) = coco.loadAnns(coco.getAnnIds())
    assert len(ann["segmentation"]) == 2 and ann["area"] == 16 + 20
    assert ann["bbox"] == [10.0, 8.0, 12.0, 6.0]
    png = np.asarray(Image.open(out / "masks" / "a_0.png")) > 0
    np.testing.assert_array_equal(png[8:14, 10:22], bitmap)
    np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), png)  # rectangles: exact


def test_export_from_an_unzipped_coco_export_folder(tmp_path):
    """CVAT's COCO 1.0 export, unzipped: annotations/instances_default.json + images/default/."""
    from cvat_tools.formats.coco import write_coco

    root = tmp_path / "coco_export"
    (root / "images" / "default").mkdir(parents=True)
    _image(root / "images" / "default" / "f.jpg")
    ds = Dataset(images=[ImageAnnotation("f.jpg", 40, 30, [Instance("Eosinophils", Polygon([(5, 5), (25, 5), (25, 20)]))],
                                         id=1)])
    write_coco(ds, root / "annotations" / "instances_default.json")
    code, _, stderr = run_cli("export", root, "--out", tmp_path / "out")
    assert code == 0, stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["format"] == "coco" and manifest["per_class"] == {"eosinophil": 1}
