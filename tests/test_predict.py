"""cvat-tools predict: CVAT-importable annotations, overlays, differential count, bad files."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvat_tools import labels
from cvat_tools.formats.annotations import Mask
from cvat_tools.formats.cvat_xml import read_cvat_xml
from cvat_tools.formats.masks import mask_to_full
from cvat_tools.imaging import load_image
from cvat_tools.pipeline import Pipeline, check_attributes
from cli_run import run_cli as run

GOOD = ["BloodImage_00002.jpg", "BloodImage_00003.jpg"]


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory, bccd_dir):
    """Two real BCCD fields, a truncated JPEG, a text file named .png, an empty file."""
    folder = tmp_path_factory.mktemp("mixed")
    for name in GOOD:
        shutil.copy(bccd_dir / "images" / name, folder / name)
    data = (bccd_dir / "images" / GOOD[0]).read_bytes()
    (folder / "sub").mkdir()
    (folder / "sub" / "truncated.jpg").write_bytes(data[:200])
    (folder / "notes.png").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    return folder




@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, mixed_dir, weights_dir):
    out = tmp_path_factory.mktemp("pred") / "out"
    result = run("predict", mixed_dir, "--out", out, "--overlay", "--report",
                 "--weights", weights_dir)
    return out, result


def test_mixed_folder_annotates_good_lists_bad_exits_nonzero(mixed_run):
    out, (code, stdout, stderr) = mixed_run
    assert code == 1
    for bad in ("truncated.jpg", "notes.png", "empty.jpg"):
        assert bad in stderr
    assert "readme.txt" not in stderr  # not an image suffix: not an input at all
    assert "3 input(s) could not be annotated" in stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "predict.json").read_text())
    assert [im["name"] for im in summary["images"]] == GOOD
    assert len(summary["failed"]) == 3


def test_cvat_xml_matches_the_pipeline(mixed_run, mixed_dir, weights_dir):
    out, _ = mixed_run
    dataset = read_cvat_xml(out / "annotations.xml")
    assert [im.name for im in dataset.images] == GOOD
    assert [spec.name for spec in dataset.labels] == list(labels.ALL_CLASSES)
    declared = {a.name for a in dataset.labels[0].attributes}
    assert declared == {"classifier", "classifier_score", "refiner", "refiner_score",
                        "needs_review", "review_reason", "review_priority"}
    pipeline = Pipeline.load(weights=weights_dir)
    for image in dataset.images:
        rgb = load_image(mixed_dir / image.name)
        assert (image.width, image.height) == (rgb.shape[1], rgb.shape[0])
        expected = pipeline.run(rgb, threshold=0.5)
        assert len(image.instances) == len(expected) >= 1
        for got, want in zip(image.instances, expected):
            assert isinstance(got.geometry, Mask) and got.label == want.label
            full = mask_to_full(got.geometry, image.width, image.height)
            assert np.array_equal(full, mask_to_full(want.geometry, image.width, image.height))
            assert got.attributes == want.attributes and check_attributes(got) == []
    constructor = json.loads((out / "labels.json").read_text())
    assert [entry["name"] for entry in constructor] == list(labels.ALL_CLASSES)


def test_overlays_and_report(mixed_run):
    out, _ = mixed_run
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == [Path(n).stem + ".png" for n in GOOD]
    with Image.open(out / "overlays" / overlays[0]) as im:
        assert im.size == (640, 480)
    dataset = read_cvat_xml(out / "annotations.xml")
    rows = list(csv.DictReader((out / "report" / "counts.csv").open()))
    total = {r["cell_type"]: int(r["count"]) for r in rows if r["image"] == "TOTAL"}
    n = sum(len(im.instances) for im in dataset.images)
    assert sum(total.values()) == n
    for im in dataset.images:
        per = {r["cell_type"]: int(r["count"]) for r in rows if r["image"] == im.name}
        assert sum(per.values()) == len(im.instances)
        for inst in im.instances:
            assert per[inst.label] >= 1
    pct = sum(float(r["percent"]) for r in rows if r["image"] == "TOTAL")
    assert abs(pct - 100.0) < 0.5
    with Image.open(out / "report" / "counts.png") as im:
        assert im.size[0] > 300
    queue = list(csv.DictReader((out / "report" / "review_queue.csv").open()))
    assert len(queue) == n and [int(r["rank"]) for r in queue] == list(range(1, n + 1))
    priorities = [int(r["review_priority"]) for r in queue]
    assert priorities == sorted(priorities, reverse=True)
    by_cell = {(im.name, k): inst for im in dataset.images for k, inst in enumerate(im.instances)}
    for r in queue:  # the same score CVAT receives as an attribute
        assert by_cell[(r["image"], int(r["cell"]))].attributes["review_priority"] == r["review_priority"]


@pytest.mark.parametrize("fmt, produced", [
    ("coco", "instances_default.json"), ("json", "annotations.json"), ("yolo", "yolo/data.yaml"),
])
def test_other_formats(tmp_path, bccd_dir, weights_dir, fmt, produced):
    image = bccd_dir / "images" / GOOD[0]
    code, _, stderr = run("predict", image, "--out", tmp_path / "o", "--format", fmt,
                          "--weights", weights_dir)
    assert code == 0, stderr
    assert (tmp_path / "o" / produced).is_file()
    if fmt == "coco":
        from cvat_tools.formats.coco import read_coco

        ds = read_coco(tmp_path / "o" / produced)
    elif fmt == "json":
        from cvat_tools.formats.thesis_json import read_thesis_json

        ds = read_thesis_json(tmp_path / "o" / produced)
    else:
        from cvat_tools.formats.yolo import read_yolo

        ds = read_yolo(tmp_path / "o" / "yolo", sizes={GOOD[0]: (640, 480)})
        listed = (tmp_path / "o" / "yolo" / "train.txt").read_text().split()  # every listed image exists
        assert listed == [f"images/train/{GOOD[0]}"] and (tmp_path / "o" / "yolo" / listed[0]).is_file()
    assert len(ds.images) == 1 and len(ds.images[0].instances) >= 1
    assert all(i.label in labels.ALL_CLASSES for i in ds.images[0].instances)


def test_refuses_to_replace_a_foreign_folder(tmp_path, bccd_dir, weights_dir):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    code, _, stderr = run("predict", bccd_dir / "images" / GOOD[0], "--out", foreign,
                          "--weights", weights_dir)
    assert code == 2 and "not written by 'cvat-tools predict'" in stderr
    assert (foreign / "thesis.docx").read_text() == "precious"


def test_only_bad_inputs_leave_no_output(tmp_path, weights_dir):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    code, _, stderr = run("predict", bad, tmp_path / "missing.png", "--out", tmp_path / "o",
                          "--weights", weights_dir)
    assert code == 2 and "no image could be annotated" in stderr
    assert "missing.png: no such file" in stderr
    assert not (tmp_path / "o").exists()


def test_rerun_replaces_previous_output(tmp_path, bccd_dir, weights_dir):
    image = bccd_dir / "images" / GOOD[0]
    assert run("predict", image, "--out", tmp_path / "o", "--weights", weights_dir,
               "--overlay")[0] == 0
    assert (tmp_path / "o" / "overlays").is_dir()
    assert run("predict", image, "--out", tmp_path / "o", "--weights", weights_dir)[0] == 0
    assert not (tmp_path / "o" / "overlays").exists()  # replaced whole, no stale files


def test_missing_classifier_is_one_line(tmp_path, bccd_dir):
    empty = tmp_path / "w"
    empty.mkdir()
    code, _, stderr = run("predict", bccd_dir / "images" / GOOD[0], "--out", tmp_path / "o",
                          "--weights", empty)
    assert code == 2 and stderr.count("\n") == 1 and "no classifier bundle" in stderr


def test_prior_option_changes_the_refiners_decision_scores(tmp_path, bccd_dir, shipped_paths):
    image = bccd_dir / "images" / GOOD[0]
    scores = {}
    for prior in ("bundle", "none"):
        code, _, stderr = run("predict", image, "--out", tmp_path / prior, "--prior", prior)
        assert code == 0, stderr
        ds = read_cvat_xml(tmp_path / prior / "annotations.xml")
        scores[prior] = [(i.attributes["refiner"], i.attributes["refiner_score"]) for i in ds.images[0].instances]
        used = json.loads((tmp_path / prior / "predict.json").read_text())["refiner_prior"]
        assert used["name"] == ("peripheral-blood" if prior == "bundle" else "none")  # recorded
        assert (used["weights"] is None) == (prior == "none")
        if used["weights"]:
            assert abs(sum(used["weights"].values()) - 1) < 1e-4 and used["weights"]["neutrophil"] > 0.3
    assert scores["bundle"] and len(scores["bundle"]) == len(scores["none"])
    # same cells, another prior: the refiner's posterior (and maybe its answer) moves
    assert scores["bundle"] != scores["none"]
    code, _, stderr = run("predict", image, "--out", tmp_path / "bad", "--prior", "leukaemia")
    assert code != 0 and "leukaemia" in stderr and not (tmp_path / "bad").exists()
