"""A new user's rough edges (issue 21): progress on a terminal only, --refiner none, classify
through the rule, evaluate --classical side by side, a reason for every review mark, and a
classifier/refiner mismatch found from the manifests before any weights load."""
from __future__ import annotations

import contextlib
import csv
import json

import numpy as np
import pytest

from cli_run import run_cli
from cvat_tools import labels
from cvat_tools.bundle import read_manifest, save_bundle
from cvat_tools.formats.annotations import Instance, Mask
from cvat_tools.formats.cvat_xml import read_cvat_xml
from cvat_tools.pipeline import (
    REASON_BOTH, REASON_DISAGREE, REASON_LOW_SCORE, REASON_NONE, REVIEW_REASONS, Pipeline,
    check_attributes, review_note,
)
from pipeline_fakes import FakeModel, GridSegmenter, shared_weights

QUIET_FIELD = "BloodImage_00002.jpg"
# With the shipped models its one cell is flagged: the classifier says platelet, the refiner
# neutrophil (a detection score near 1.00 with a "?": the case issue 21 reports).
DOUBTFUL_FIELD = "BloodImage_00001.jpg"


# -- 1. progress: on a terminal, on stderr, per image and per stage; never on stdout ---------


@pytest.mark.parametrize("terminal", [True, False])
def test_predict_progress_shows_on_a_terminal_only(tmp_path, bccd_dir, terminal):
    image = bccd_dir / "images" / QUIET_FIELD
    code, out, err = run_cli("predict", image, "--out", tmp_path / "o",
                                 "--weights", shared_weights(), terminal=terminal)
    assert code == 0, err
    assert len(out.splitlines()) == 1 and "cells in 1 images ->" in out  # stdout: data only
    if terminal:
        assert "loading models for 1 image(s)" in err  # before the seconds of loading
        assert f"{QUIET_FIELD}: segmenting" in err  # which image, which stage
        assert "1/1" in err
    else:
        assert err == ""  # a log file gets no bar


def test_annotate_progress_per_frame_on_a_terminal_only(monkeypatch):
    import cvat_sdk.auto_annotation as auto_annotation

    from cvat_tools import cvat_function
    from cvat_tools.commands import annotate as annotate_cmd

    def annotate_task(client, task_id, function, pbar=None, **kwargs):  # cvat-sdk's loop
        with pbar.task(total=3, unit="samples"):
            for _ in pbar.iter(range(3)):
                pass

    monkeypatch.setattr(auto_annotation, "annotate_task", annotate_task)
    monkeypatch.setattr(annotate_cmd, "connect", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(annotate_cmd, "check_task_labels", lambda *a: False)
    monkeypatch.setattr(cvat_function, "create", lambda **kwargs: None)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "tok")
    for terminal in (True, False):
        code, out, err = run_cli("annotate", "--host", "http://127.0.0.1:9", "--task", "3",
                                     terminal=terminal)
        assert code == 0, err
        assert out == "task 3: annotated (threshold 0.5, masks)\n"
        assert ("3/3" in err) is terminal, err


# -- 2. --refiner none ------------------------------------------------------------------------


def test_refiner_none_makes_the_classifier_final(tmp_path, bccd_dir, shipped_paths):
    image = bccd_dir / "images" / DOUBTFUL_FIELD
    code, _, err = run_cli("predict", image, "--out", tmp_path / "o", "--refiner", "none")
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "predict.json").read_text())
    assert summary["models"]["refiner"] is None and summary["refiner_prior"] is None
    cells = read_cvat_xml(tmp_path / "o" / "annotations.xml").images[0].instances
    assert cells
    for cell in cells:
        assert cell.attributes["refiner"] == "none" and cell.label == cell.attributes["classifier"]
    assert Pipeline.load(refiner=None).refiner is not None  # the default stays the shipped one


def test_refiner_none_in_both_cvat_functions(monkeypatch, shipped_paths):
    from cvat_tools import cvat_function, serverless

    assert cvat_function.create(refiner="none").pipeline.refiner is None  # -p refiner=str:none
    monkeypatch.setenv(serverless.ENV_REFINER, "none")
    assert serverless.load_pipeline_from_env().refiner is None


# -- 3. classify names a cell as predict does (classifier, refiner unless blast/band, rule) ---


def _pbc_test_images(pbc_dir, n=10):
    from cvat_tools.bundle import shipped_bundle
    from cvat_tools.data.cells import split_from_manifest

    manifest = read_manifest(shipped_bundle("classifier"))
    test = split_from_manifest(manifest["split"]["files"], pbc_dir, "test")  # never trained on
    return [s.path for s in test[::max(1, len(test) // n)]]


def test_classify_goes_through_the_rule_on_pbc(tmp_path, pbc_dir, shipped_paths):
    images = _pbc_test_images(pbc_dir)
    runs = {}
    for name, extra in (("rule", ["--rule"]), ("default", []), ("none", ["--refiner", "none"])):
        out = tmp_path / f"{name}.csv"
        code, _, err = run_cli("classify", *images, "--out", out, *extra)
        assert code == 0, err
        runs[name] = list(csv.DictReader(out.open()))
    assert runs["default"] == runs["none"]  # the classifier alone, as before the rule came
    for row in runs["rule"]:
        assert row["refiner"] in labels.SHARED_CLASSES  # the refiner answered every cell
        final = row["classifier"] if row["classifier"] in labels.CLASSIFIER_FINAL else row["refiner"]
        assert row["label"] == final and row["top3"].startswith(final + ":")
        assert (row["needs_review"] == "true") == (row["review_reason"] != REASON_NONE)
    for plain, row in zip(runs["rule"], runs["none"]):
        assert row["refiner"] == "none" and row["label"] == row["classifier"] == plain["classifier"]
    assert [r["file"] for r in runs["none"]] == [str(p) for p in images]


# -- 4. evaluate segmenter --classical: side by side with the Mask R-CNN ----------------------


def test_evaluate_classical_is_side_by_side(bccd_dir, tmp_path, shipped_paths):
    scores = tmp_path / "scores.json"
    code, out, err = run_cli("evaluate", "segmenter", "--data", bccd_dir, "--classical",
                             "--limit", "2", "--threads", "1", "--json", scores)
    assert code == 0, err
    results = json.loads(scores.read_text())["results"]
    assert list(results) == ["maskrcnn", "classical"]
    assert all(r["images"] == 2 for r in results.values())
    assert "maskrcnn" in out and "classical" in out


# -- 7. every "?" has a reason -----------------------------------------------------------------


def test_every_review_flag_has_a_reason():
    image = np.full((40, 200, 3), 200, np.uint8)
    clf = FakeModel([("neutrophil", 0.9), ("eosinophil", 0.91), ("monocyte", 0.7),
                     ("lymphocyte", 0.9), ("blast cell", 0.5), ("band cell", 0.95)])
    ref = FakeModel([("neutrophil", 0.8), ("neutrophil", 0.55), ("monocyte", 0.48),
                     ("eosinophil", 0.9), ("lymphocyte", 0.99), ("neutrophil", 0.99)],
                    labels_=labels.SHARED_CLASSES)
    cells = Pipeline(GridSegmenter(6), clf, ref, review_threshold=0.6).run(image)
    reasons = [c.attributes["review_reason"] for c in cells]
    assert reasons == [REASON_NONE, REASON_BOTH, REASON_LOW_SCORE, REASON_DISAGREE,
                       REASON_LOW_SCORE, REASON_NONE]
    for cell in cells:
        assert (cell.attributes["needs_review"] == "true") == (cell.attributes["review_reason"] != "none")
        assert bool(review_note(cell.label, cell.attributes)) == (cell.attributes["needs_review"] == "true")
        assert check_attributes(cell) == []
    assert review_note(cells[1].label, cells[1].attributes) == (
        "classifier: eosinophil 0.91 / refiner: neutrophil 0.55; "
        "low class score: neutrophil 0.55 < 0.60")
    assert review_note(cells[2].label, cells[2].attributes) == "low class score: monocyte 0.48 < 0.60"
    # blast: the classifier's answer is final, so is its score
    assert review_note(cells[4].label, cells[4].attributes) == "low class score: blast cell 0.50 < 0.60"


def test_predict_reports_why_each_cell_is_flagged(tmp_path, bccd_dir, shipped_paths):
    image = bccd_dir / "images" / DOUBTFUL_FIELD
    code, _, err = run_cli("predict", image, "--out", tmp_path / "o", "--report", "--overlay")
    assert code == 0, err
    cells = read_cvat_xml(tmp_path / "o" / "annotations.xml").images[0].instances
    flagged = [c for c in cells if c.attributes["needs_review"] == "true"]
    assert flagged  # the field of the issue: a confident detection, a type in doubt
    review = json.loads((tmp_path / "o" / "predict.json").read_text())["images"][0]["review"]
    assert [r["mark"] for r in review] == [f"?{i}" for i in range(1, len(flagged) + 1)]
    rows = list(csv.DictReader((tmp_path / "o" / "report" / "review.csv").open()))
    assert len(rows) == len(review) == len(flagged)
    for entry, row, cell in zip(review, rows, flagged):
        assert entry["reason"] == row["reason"] == cell.attributes["review_reason"]
        assert entry["reason"] in REVIEW_REASONS[1:] and entry["note"] == row["note"]
        assert entry["note"] == review_note(cell.label, cell.attributes)
        if "disagree" in entry["reason"]:
            assert f"classifier: {cell.attributes['classifier']} " in entry["note"]
            assert f"refiner: {cell.attributes['refiner']} " in entry["note"]


def test_overlay_legend_only_when_a_cell_is_flagged():
    from cvat_tools.commands.predict import draw_overlay

    image = np.full((300, 400, 3), 120, np.uint8)
    bitmap = np.ones((40, 40), bool)
    attributes = {"classifier": "eosinophil", "classifier_score": "91", "refiner": "neutrophil",
                  "refiner_score": "55", "needs_review": "true", "review_reason": REASON_BOTH}
    cell = Instance("neutrophil", Mask(bitmap, 20, 20), 1.0, attributes)  # top-left corner
    calm = Instance("neutrophil", Mask(bitmap, 20, 20), 1.0,
                    {**attributes, "needs_review": "false", "review_reason": REASON_NONE})
    flagged, plain = draw_overlay(image, [cell], {}), draw_overlay(image, [calm], {})
    changed = np.argwhere((flagged != plain).any(axis=2))
    below_label = changed[changed[:, 0] > 80]  # the mark beside the label is up there
    assert len(below_label) > 500  # the legend panel
    assert below_label[:, 0].min() > 150  # in a bottom corner, away from the cell
    assert (draw_overlay(image, [calm], {}) == plain).all()


# -- 8. a classifier/refiner mismatch is found from the manifests, before any weights load ---


@pytest.fixture
def four_class_classifier(tmp_path):
    import torch

    return save_bundle(tmp_path / "clf4", "classifier", {"w": torch.zeros(1)},
                       ["lymphocyte", "monocyte", "neutrophil", "eosinophil"],
                       {"backbone": "efficientnet_lite0"}, input_size=64)


@pytest.fixture
def no_weights_loading(monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the pairing check")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("command", ["predict", "classify"])
def test_mismatched_refiner_is_one_line_before_loading(tmp_path, bccd_dir, shipped_paths,
                                                      four_class_classifier, no_weights_loading,
                                                      command):
    image = bccd_dir / "images" / QUIET_FIELD
    if command == "predict":
        args = ["predict", image, "--out", tmp_path / "o", "--classifier", four_class_classifier]
    else:
        args = ["classify", image, "--out", tmp_path / "o.csv", "--bundle", four_class_classifier,
                "--rule"]
    code, _, err = run_cli(*args)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"refiner {shipped_paths['refiner']} does not fit classifier {four_class_classifier}" in err
    assert "'basophil'" in err and "refiner 'none'" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.csv").exists()


def test_a_bundle_of_the_wrong_kind_is_named_before_loading(tmp_path, bccd_dir, shipped_paths,
                                                             no_weights_loading):
    code, _, err = run_cli("predict", bccd_dir / "images" / QUIET_FIELD, "--out", tmp_path / "o",
                           "--refiner", shipped_paths["classifier"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{shipped_paths['classifier']}: is a classifier bundle, but the refiner" in err
