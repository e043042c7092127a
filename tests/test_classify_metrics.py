"""Classification metrics on hand-computed cases; cross-domain folding."""
from __future__ import annotations

import pytest

from cvat_tools.metrics.classification import score_predictions
from cvat_tools.metrics.classification import classification_report, plot_confusion


def test_report_matches_hand_computation(tmp_path):
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    rep = classification_report(truth, pred, ["a", "b", "c"])
    assert rep.confusion.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert rep.accuracy == pytest.approx(4 / 6)
    assert rep.precision["a"] == 1.0 and rep.recall["a"] == pytest.approx(2 / 3)
    assert rep.f1["b"] == pytest.approx(0.5)
    assert rep.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    png = plot_confusion(rep, tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cross_domain_folds_band_and_counts_other_as_wrong():
    truth = ["neutrophil", "neutrophil", "lymphocyte", "basophil"]
    pred = ["band cell", "myelocyte", "lymphocyte", "basophil"]
    rep = score_predictions(truth, pred, "cross-domain")
    assert rep.n == 3  # basophil is not a cross-domain class
    assert rep.accuracy == pytest.approx(2 / 3)
    assert rep.macro_f1 == pytest.approx((2 / 3 + 1.0) / 2)  # absent classes do not count


def test_pbc_folder_folding():
    rep = score_predictions(["band cell", "myelocyte"], ["neutrophil", "promyelocyte"], "pbc-folders")
    assert rep.accuracy == 1.0
