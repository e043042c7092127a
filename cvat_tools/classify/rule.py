"""The thesis rule: who names the cell when the classifier and the refiner disagree.

The classifier (trained on PBC's fine classes) names the class. For blast and band cells its
answer stands: the refiner does not know them. Otherwise the refiner's answer over the shared
classes is final, as in the thesis: it was trained to ignore which lab a crop came from, and
the PBC-only classifier is the model that breaks on other labs (on BCCD/JTSC crops it calls most
WBCs "platelet"; see MODEL_CARD.md), so its out-of-refiner answers are not trusted by default.
``refiner_confident`` restores a conservative variant: a class the refiner does not know
(platelet, erythroblast) then stands unless the refiner scores at least that much.
Both answers are kept in the :class:`Decision` so an annotator can see the disagreement.
"""
from __future__ import annotations

from .. import labels as L
from ..models.protocols import Decision, Prediction


def combine(
    classifier_pred: Prediction,
    refiner_pred: Prediction | None,
    classifier_final: tuple[str, ...] | list[str] = L.CLASSIFIER_FINAL,
    refiner_confident: float | None = None,
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
    if refiner_confident is None or refiner_knows or r.score >= refiner_confident:
        keep.label, keep.score = r.label, r.score
    return keep
