"""``export`` on the folder layouts real datasets come in: images beside the annotations,
anywhere inside a zip, its own output, several inputs; and a zip export's manifest."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from cvat_tools.formats.annotations import Dataset, ImageAnnotation, Instance, Polygon
from cvat_tools.formats.cvat_xml import to_cvat_xml

SQUARE = Polygon([(5, 5), (25, 5), (25, 20), (5, 20)])


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


def _xml(*names: str, label: str = "monocyte") -> bytes:
    return to_cvat_xml(Dataset(images=[ImageAnnotation(n, 40, 30, [Instance(label, SQUARE)], id=k)
                                       for k, n in enumerate(names)]))


def _export(*args) -> tuple[int, str, dict | None]:
    code, _, stderr = run_cli("export", *args)
    out = Path(args[args.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text()) if code == 0 else None
    return code, stderr, manifest


def test_images_beside_the_xml_need_no_images_option(tmp_path):
    folder = tmp_path / "published"
    _png(folder / "a.png")
    _png(folder / "more" / "b.png", 1)  # CVAT named it by its upload path
    (folder / "annotations.xml").write_bytes(_xml("a.png", "more/b.png"))
    out = folder / "train"  # an --out beside the inputs: never mistaken for them next time
    for _ in range(2):
        code, stderr, manifest = _export(folder / "annotations.xml", "--out", out)
        assert code == 0, stderr
    assert manifest["images"] == 2 and manifest["inputs"][0]["images_from"] == str(folder)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.png", "b.png"]
    assert [f["file"] for f in manifest["image_files"]] == [str(folder / "a.png"), str(folder / "more" / "b.png")]


@pytest.mark.parametrize("member", ["f.png", "frames/f.png", "data/images/default/f.png"])
def test_images_anywhere_in_the_zip(tmp_path, member):
    source = _png(tmp_path / "src.png")
    archive = tmp_path / "task.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", _xml("f.png"))
        zf.write(source, member)
    code, stderr, manifest = _export(archive, "--out", tmp_path / "out")
    assert code == 0, stderr
    assert (tmp_path / "out" / "images" / "f.png").read_bytes() == source.read_bytes()
    # the manifest names the zip and its member, not the temporary folder it was unpacked into
    assert manifest["image_files"] == [{"image": "f.png", "written_as": "images/f.png",
                                        "zip": str(archive), "member": member}]
    assert manifest["inputs"] == [{"source": str(archive), "format": "cvat", "images_from": f"{archive} (zip)"}]
    assert "cvat-tools-zip-" not in json.dumps(manifest)


def test_relative_name_wins_and_ambiguous_base_names_are_an_error(tmp_path):
    archive = tmp_path / "task.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", _xml("left/f.png"))
        zf.write(_png(tmp_path / "l.png"), "images/left/f.png")
        zf.write(_png(tmp_path / "r.png", 1), "images/right/f.png")
    code, stderr, manifest = _export(archive, "--out", tmp_path / "out")
    assert code == 0, stderr
    assert manifest["image_files"][0]["member"] == "images/left/f.png"
    ambiguous = tmp_path / "ambiguous.zip"
    with zipfile.ZipFile(ambiguous, "w") as zf:
        zf.writestr("annotations.xml", _xml("f.png"))
        zf.write(tmp_path / "l.png", "images/left/f.png")
        zf.write(tmp_path / "r.png", "images/right/f.png")
    code, _, stderr = run_cli("export", ambiguous, "--out", tmp_path / "out2")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "matches both images/left/f.png and images/right/f.png" in stderr and str(ambiguous) in stderr
    assert not (tmp_path / "out2").exists()


def test_an_export_folder_is_an_input(tmp_path):
    _png(tmp_path / "pics" / "a.png")
    (tmp_path / "a.xml").write_bytes(_xml("a.png", label="Neutrophils"))
    code, stderr, first = _export(tmp_path / "a.xml", "--images", tmp_path / "pics", "--out", tmp_path / "one")
    assert code == 0, stderr
    code, stderr, second = _export(tmp_path / "one", "--out", tmp_path / "two")
    assert code == 0, stderr
    assert second["format"] == "coco" and second["per_class"] == first["per_class"] == {"neutrophil": 1}
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one" / "masks" / "a_0.png")),
                                  np.asarray(Image.open(tmp_path / "two" / "masks" / "a_0.png")))


def test_several_inputs_and_a_name_two_of_them_share(tmp_path):
    _png(tmp_path / "pics" / "a.png")
    _png(tmp_path / "pics" / "b.png", 1)
    (tmp_path / "a.xml").write_bytes(_xml("a.png", label="monocyte"))
    (tmp_path / "b.xml").write_bytes(_xml("b.png", label="lymphocyte"))
    code, stderr, manifest = _export(tmp_path / "a.xml", tmp_path / "b.xml", "--images", tmp_path / "pics",
                                     "--out", tmp_path / "out")
    assert code == 0, stderr
    assert manifest["per_class"] == {"lymphocyte": 1, "monocyte": 1}
    assert manifest["source"] == [str(tmp_path / "a.xml"), str(tmp_path / "b.xml")]
    (tmp_path / "c.xml").write_bytes(_xml("a.png", label="lymphocyte"))
    code, _, stderr = run_cli("export", tmp_path / "a.xml", tmp_path / "c.xml", "--images", tmp_path / "pics",
                              "--out", tmp_path / "clash")
    assert code == 2 and f"image 'a.png' is in both {tmp_path / 'a.xml'} and {tmp_path / 'c.xml'}" in stderr
    assert not (tmp_path / "clash").exists()


def test_datumaro_export_zip_with_images(tmp_path):
    """CVAT's Datumaro 1.0 export with images: annotations/default.json + images/default/."""
    from cvat_tools.formats.datumaro import to_datumaro

    source = _png(tmp_path / "src.png")
    archive = tmp_path / "datumaro.zip"
    doc = to_datumaro(Dataset(images=[ImageAnnotation("f.png", 40, 30, [Instance("Lymphocyte", SQUARE)])]))
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations/default.json", json.dumps(doc))
        zf.write(source, "images/default/f.png")
    code, stderr, manifest = _export(archive, "--out", tmp_path / "out")
    assert code == 0, stderr
    assert manifest["format"] == "datumaro" and manifest["per_class"] == {"lymphocyte": 1}
    png = np.asarray(Image.open(tmp_path / "out" / "masks" / "f_0.png"))
    assert (png > 0).sum() == 20 * 15
