"""CVAT export zips opened safely; labels mapped onto the project's label set."""
from __future__ import annotations

import stat
import zipfile

import pytest

from cvat_tools.errors import InputError
from cvat_tools.formats import archive, read_annotations
from cvat_tools.formats.annotations import Dataset, ImageAnnotation, Instance, LabelSpec, Polygon
from cvat_tools.formats.labelmap import apply_label_map, load_label_map

XML = (b'<annotations><image id="0" name="a.jpg" width="8" height="8">'
       b'<polygon label="Neutrophils" occluded="0" points="1,1;5,1;5,5"/></image></annotations>')


def _zip(path, members: dict[str, bytes], mode_of: dict[str, int] | None = None):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode_of and name in mode_of:
                info.external_attr = mode_of[name] << 16
            zf.writestr(info, data)
    return path


def test_reads_a_cvat_export_zip(tmp_path):
    path = _zip(tmp_path / "task.zip", {"annotations.xml": XML})
    ds = read_annotations(path)
    assert ds.images[0].instances[0].label == "Neutrophils"


@pytest.mark.parametrize("name", ["../evil.xml", "/abs/annotations.xml", "ok/../../evil.xml", "C:/x.xml"])
def test_members_escaping_the_archive_are_refused(tmp_path, name):
    path = _zip(tmp_path / "evil.zip", {"annotations.xml": XML, name: b"x"})
    with pytest.raises(InputError, match=r"evil\.zip: member .* outside the archive"):
        archive.extract_archive(path, tmp_path / "out")
    assert not (tmp_path / "evil.xml").exists()


def test_symlink_members_are_refused(tmp_path):
    path = _zip(tmp_path / "link.zip", {"annotations.xml": XML, "images/a.jpg": b"/etc/passwd"},
                mode_of={"images/a.jpg": stat.S_IFLNK | 0o777})
    with pytest.raises(InputError, match=r"link\.zip: member 'images/a\.jpg' is a link"):
        archive.extract_archive(path, tmp_path / "out")


def test_zip_bomb_is_refused(tmp_path):
    path = _zip(tmp_path / "bomb.zip", {"annotations.xml": XML, "zeros.bin": bytes(32 * 1024 * 1024)})
    assert path.stat().st_size < 100_000
    with pytest.raises(InputError, match=r"bomb\.zip: member 'zeros\.bin' expands .*zip bomb"):
        archive.extract_archive(path, tmp_path / "out")
    assert not (tmp_path / "out" / "zeros.bin").exists()


def test_total_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 1000)
    path = _zip(tmp_path / "big.zip", {"annotations.xml": XML, "a.txt": b"x" * 2000})
    with pytest.raises(InputError, match=r"big\.zip: expands to .* over the"):
        archive.extract_archive(path, tmp_path / "out")


def test_not_a_zip_and_no_annotations(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"bad\.zip: not a readable zip"):
        read_annotations(bad)
    empty = _zip(tmp_path / "empty.zip", {"readme.txt": b"hi", "other.txt": b"x"})
    with pytest.raises(InputError, match="no annotations.xml"):
        read_annotations(empty)


def _ds(*labels: str) -> Dataset:
    poly = Polygon([(1, 1), (4, 1), (4, 4)])
    return Dataset(images=[ImageAnnotation("a.jpg", 8, 8, [Instance(l, poly) for l in labels])],
                   labels=[LabelSpec(l) for l in dict.fromkeys(labels)])


def test_known_aliases_resolve_without_a_map():
    ds = apply_label_map(_ds("Neutrophils", "BAND_CELLS", "Lymphocyte"), None, "x.xml")
    assert [i.label for i in ds.images[0].instances] == ["neutrophil", "band cell", "lymphocyte"]
    assert [l.name for l in ds.labels] == ["neutrophil", "band cell", "lymphocyte"]


def test_unknown_labels_are_listed_with_the_fix():
    with pytest.raises(InputError) as info:
        apply_label_map(_ds("neutrophil", "RBC", "Seg Neu", "RBC"), None, "task.xml")
    message = str(info.value)
    assert message.startswith("task.xml: labels not in the project's label set")
    assert "'RBC' (2 shapes)" in message and "'Seg Neu' (1 shapes)" in message
    assert "--label-map FILE" in message


def test_label_map_files(tmp_path):
    yml = tmp_path / "map.yaml"
    yml.write_text("Seg Neu: neutrophil\nRBC: null\n")
    mapping = load_label_map(yml)
    ds = apply_label_map(_ds("Seg Neu", "RBC", "monocyte"), mapping, "task.xml")
    assert [i.label for i in ds.images[0].instances] == ["neutrophil", "monocyte"]
    assert ds.skipped == [{"image": "a.jpg", "label": "RBC", "reason": "label mapped to null by the label map"}]
    js = tmp_path / "map.json"
    js.write_text('{"seg neu": "Neutrophils"}')
    assert load_label_map(js) == {"seg neu": "neutrophil"}
    js.write_text('{"x": "dragon"}')
    with pytest.raises(InputError, match=r"map\.json: maps to labels the project does not have: 'x' -> 'dragon'"):
        load_label_map(js)
    js.write_text("[1, 2]")
    with pytest.raises(InputError, match=r"map\.json: a label map is a mapping"):
        load_label_map(js)


@pytest.mark.parametrize("fmt, target", [("cvat", "annotations.xml"), ("coco", "instances_default.json"),
                                         ("thesis", "pred.json"), ("yolo", "yolo")])
def test_format_detection_reads_what_write_annotations_wrote(tmp_path, fmt, target):
    from PIL import Image

    from cvat_tools.formats import detect_format, write_annotations

    ds = _ds("neutrophil", "monocyte")
    path = write_annotations(ds, tmp_path / target, fmt)
    if fmt == "yolo":  # YOLO needs the image for its size
        Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    assert detect_format(path)[0] == fmt
    back = read_annotations(path, images_dir=tmp_path)
    assert [i.label for i in back.images[0].instances] == ["neutrophil", "monocyte"]
    assert back.images[0].instances[0].geometry == Polygon([(1.0, 1.0), (4.0, 1.0), (4.0, 4.0)])
