"""The thesis rule: who names the cell when the classifier and the refiner disagree.

The classifier (trained on PBC's fine classes) names the class. For blast and band cells its
answer stands: the refiner does not know them. Otherwise, when there is a refiner and either
the classifier's class is one the refiner knows or the refiner is confident, the refiner's
answer over the shared classes is final (it was trained to ignore which lab a crop came from).
Both answers are kept in the :class:`Decision` so an annotator can see the disagreement.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import labels as L
from .classifier import Prediction

REFINER_CONFIDENT = 0.9  # refiner score that overrides even a class it does not know


@dataclass
class Decision:
    label: str
    score: float
    classifier_label: str
    classifier_score: float
    refiner_label: str | None
    refiner_score: float | None
    agree: bool


def combine(
    classifier_pred: Prediction,
    refiner_pred: Prediction | None,
    classifier_final: tuple[str, ...] | list[str] = L.CLASSIFIER_FINAL,
    refiner_confident: float = REFINER_CONFIDENT,
) -> Decision:
    """Final label of one cell from the classifier's and (optionally) the refiner's answers."""
    c = classifier_pred
    r = refiner_pred
    keep = Decision(c.label, c.score, c.label, c.score,
                    r.label if r else None, r.score if r else None,
                    agree=(r is None or r.label == c.label))
    if r is None or c.label in classifier_final:
        return keep
    refiner_knows = c.label in r.probs
    if refiner_knows or r.score >= refiner_confident:
        keep.label, keep.score = r.label, r.score
    return keep
