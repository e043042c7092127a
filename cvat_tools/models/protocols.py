"""The Pipeline's seams: what a segmenter, a crop classifier and a decision rule offer.

:class:`~cvat_tools.pipeline.Pipeline` types against these, not against the torch classes, so
the Mask R-CNN and the watershed segmenter, the classifier and the refiner, and the fakes of
the tests all plug in the same way (the segmenter's seam, :class:`~cvat_tools.segment.base.Segmenter`,
lives beside its Detection). Torch-free on purpose: the rule and the fakes need no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np



@dataclass
class Prediction:
    """One crop's answer: the best label, its probability, and every label's."""

    label: str
    score: float
    probs: dict[str, float]  # over the model's labels

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probs.items(), key=lambda kv: kv[1], reverse=True)[:k]


@dataclass
class Decision:
    """The rule's verdict on one cell, with both models' answers kept for the annotator."""

    label: str
    score: float
    classifier_label: str
    classifier_score: float
    refiner_label: str | None
    refiner_score: float | None
    agree: bool


class CellModel(Protocol):
    """A classifier or refiner: square masked crops of ``input_size`` px in, one answer each."""

    labels: list[str]
    input_size: int  # from the bundle's manifest, the size it was trained at

    def predict(self, crops: Sequence[np.ndarray]) -> list[Prediction]:
        ...


class Rule(Protocol):
    """Who names the cell when the classifier and the refiner disagree (classify/rule.py)."""

    def __call__(self, classifier_pred: Prediction, refiner_pred: Prediction | None) -> Decision:
        ...
