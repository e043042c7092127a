"""Before/after: the final label the pipeline would give each held-out cell (classifier ->
refiner -> rule, crops cut at each model's input size), scored against the correction."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics.classification import ClassificationReport, classification_report
from .corrections import REFINER_CLASSES
from .cutting import CutCell


def final_labels(classifier: Any, refiner: Any | None, classifier_crops: list[np.ndarray],
                 refiner_crops: list[np.ndarray]) -> list[str]:
    """What the pipeline names each crop (crops cut at each model's input size)."""
    from ..classify.rule import combine

    if not classifier_crops:
        return []
    clf = classifier.predict(classifier_crops)
    ref = refiner.predict(refiner_crops) if refiner is not None else [None] * len(clf)
    return [combine(c, r).label for c, r in zip(clf, ref)]


def score_cells(classifier: Any, refiner: Any | None, cells: list[CutCell]) -> ClassificationReport:
    """Per-class and macro-F1 over the classes the cells hold (other predictions count as
    errors of the true class: a neutrophil called "platelet" is a miss)."""
    truth = [c.cell.label for c in cells]
    predicted = final_labels(classifier, refiner, [c.sized[classifier.input_size] for c in cells],
                             [c.sized[refiner.input_size] for c in cells] if refiner is not None else [])
    present = [lab for lab in REFINER_CLASSES if lab in set(truth)]
    extra = sorted(set(predicted) - set(present))
    return classification_report(truth, predicted, present + extra)


def summary(report: ClassificationReport) -> dict:
    """macro-F1 and per-class F1 over the classes present in the truth."""
    present = [lab for lab in report.labels if report.support[lab] > 0]
    return {"n": report.n, "macro_f1": round(report.macro_f1, 4),
            "accuracy": round(report.accuracy, 4),
            "per_class": {lab: {"f1": round(report.f1[lab], 4), "support": report.support[lab]}
                          for lab in present}}
