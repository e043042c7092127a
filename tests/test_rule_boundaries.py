"""Exact boundaries of the thesis rule (classify/rule.py) and the review flag (pipeline.py):
a score equal to a threshold is on the documented side of it."""
from __future__ import annotations

import numpy as np
import pytest

from cvat_tools import labels as L
from cvat_tools.classify.rule import combine
from cvat_tools.models.protocols import Prediction
from cvat_tools.pipeline import REVIEW_THRESHOLD, Pipeline
from pipeline_fakes import FakeModel, GridSegmenter

SHARED = list(L.SHARED_CLASSES)


def _pred(label, score, labels):
    rest = (1 - score) / (len(labels) - 1)
    return Prediction(label, score, {lab: (score if lab == label else rest) for lab in labels})


CLF = _pred("platelet", 0.8, list(L.ALL_CLASSES))  # a class the refiner does not know


@pytest.mark.parametrize("confident", [0.9, 0.75, 0.5, 0.3])
def test_refiner_confident_is_at_least_not_above(confident):
    """``refiner_confident=t``: a refiner scoring exactly t overrides; just below, it does not."""
    at = combine(CLF, _pred("lymphocyte", confident, SHARED), refiner_confident=confident)
    assert (at.label, at.score) == ("lymphocyte", confident)
    below = combine(CLF, _pred("lymphocyte", np.nextafter(confident, 0), SHARED),
                    refiner_confident=confident)
    assert (below.label, below.score) == ("platelet", 0.8)
    above = combine(CLF, _pred("lymphocyte", np.nextafter(confident, 1), SHARED),
                    refiner_confident=confident)
    assert above.label == "lymphocyte"
    for d in (at, below, above):  # both answers are kept for the annotator
        assert d.classifier_label == "platelet" and d.refiner_label == "lymphocyte"
        assert d.agree is False


def test_refiner_decides_known_classes_whatever_its_score():
    known = combine(_pred("monocyte", 0.9, list(L.ALL_CLASSES)), _pred("lymphocyte", 0.31, SHARED),
                    refiner_confident=0.9)
    assert known.label == "lymphocyte"  # the refiner knows monocytes: its answer is final
    assert combine(CLF, _pred("lymphocyte", 0.2, SHARED)).label == "lymphocyte"  # default rule


@pytest.mark.parametrize("final", L.CLASSIFIER_FINAL)
def test_band_and_blast_stay_whatever_the_refiner_says(final):
    d = combine(_pred(final, 0.4, list(L.ALL_CLASSES)), _pred("neutrophil", 1.0, SHARED),
                refiner_confident=0.0)
    assert (d.label, d.score, d.refiner_label) == (final, 0.4, "neutrophil")


def test_review_flag_boundary_is_below_not_at():
    """needs_review when the final score is < REVIEW_THRESHOLD: exactly at it is no review."""
    image = np.full((40, 80, 3), 200, np.uint8)
    at = REVIEW_THRESHOLD
    below = float(np.nextafter(at, 0))
    clf = FakeModel([("lymphocyte", at), ("lymphocyte", below)], per_call=True)
    out = Pipeline(GridSegmenter(2), clf).run(image, threshold=0.0)
    assert [i.attributes["needs_review"] for i in out] == ["false", "true"]


def test_pipeline_threshold_keeps_a_score_equal_to_it():
    image = np.full((40, 200, 3), 200, np.uint8)
    pipe = Pipeline(GridSegmenter(5), FakeModel([("lymphocyte", 0.9)]))  # 0.99 ... 0.95
    assert len(pipe.run(image, threshold=0.97)) == 3  # 0.99, 0.98, 0.97 (>=)
