"""Which annotated shapes count as corrections, and why the others do not.

A correction is a shape a person drew or edited: CVAT's ``source`` is ``manual``,
``semi-auto`` (drawn with an interactor) or ``file`` (imported); an ``auto`` shape is a
pre-label nobody touched and teaches nothing about where the model was wrong, so it is left
out unless asked (``include_auto``). Left-out auto shapes are still cells of the lab: the
refiner sees them unlabelled (the DANN target).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .. import labels as L
from ..errors import InputError
from ..formats.annotations import Box, Dataset, Instance

CORRECTED_SOURCES = ("manual", "semi-auto", "file")
REFINER_CLASSES = L.SHARED_CLASSES  # what the adapted model learns (the refiner's label set)
MIN_PER_CLASS = 2  # one to train on, one held out


@dataclass
class Cell:
    """One annotated shape of one image; ``key`` is stable across runs (image + shape index)."""

    image: str
    index: int
    instance: Instance
    corrected: bool

    @property
    def key(self) -> str:
        return f"{self.image}#{self.index}"

    @property
    def label(self) -> str:
        return self.instance.label

    @property
    def is_box(self) -> bool:
        return isinstance(self.instance.geometry, Box)


@dataclass
class Selection:
    cells: list[Cell]  # counted corrections, refiner classes only
    unlabelled: list[Cell]  # other cells of the lab (auto shapes): DANN target only
    left_out: list[dict]  # {"image", "label", "reason"}

    def counts(self) -> dict[str, int]:
        counts = Counter(c.label for c in self.cells)
        return {lab: counts[lab] for lab in REFINER_CLASSES if counts[lab]}

    def left_out_summary(self) -> dict[str, int]:
        return dict(Counter(item["reason"] for item in self.left_out).most_common())


def select(dataset: Dataset, include_auto: bool = False) -> Selection:
    """Split the dataset's shapes into corrections, unlabelled lab cells and left-out shapes."""
    cells, unlabelled = [], []
    left_out = [dict(item) for item in dataset.skipped]
    for image in dataset.images:
        for k, inst in enumerate(image.instances):
            source = (inst.source or "manual").lower()
            corrected = source in CORRECTED_SOURCES or (include_auto and source == "auto")
            cell = Cell(image.name, k, inst, corrected)
            reason = None
            if source not in CORRECTED_SOURCES and source != "auto":
                reason = f"unknown source {source[:20]!r}"
            elif not corrected:
                reason = "auto shape nobody edited (--include-auto counts it)"
                unlabelled.append(cell)
            elif inst.label not in REFINER_CLASSES:
                reason = (f"{inst.label}: not one of the refiner's classes (the classifier's answer "
                          "stands for it)")
                unlabelled.append(cell)
            if reason is None:
                cells.append(cell)
            else:
                left_out.append({"image": image.name, "label": inst.label, "reason": reason})
    return Selection(cells, unlabelled, left_out)


def check(selection: Selection, where: str) -> None:
    """Refuse, before any training, what cannot give an honest before/after check."""
    if not selection.cells:
        reasons = "; ".join(f"{n} x {r}" for r, n in list(selection.left_out_summary().items())[:4])
        raise InputError(f"{where}: no corrected shapes of the refiner's classes "
                         f"({', '.join(REFINER_CLASSES)}) to learn from"
                         + (f" (left out: {reasons})" if reasons else "")
                         + "; correct some pre-labels in CVAT first, or pass --include-auto")
    small = {lab: n for lab, n in selection.counts().items() if n < MIN_PER_CLASS}
    if small:
        names = ", ".join(f"{lab} ({n} cell)" for lab, n in small.items())
        maps = ", ".join(f"'{lab}: null'" for lab in small)
        raise InputError(f"{where}: a class needs at least {MIN_PER_CLASS} corrected cells (one to "
                         f"learn from, one to check on): {names}; correct more of them, or leave "
                         f"them out with --label-map ({maps})")
