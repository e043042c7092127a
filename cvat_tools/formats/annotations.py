"""The one in-memory model of annotations that every reader fills and every writer reads.

Coordinates are pixels in the image's own frame, x to the right, y down, CVAT's convention
(a pixel's top-left corner is integer; polygon vertices are floats).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np


@dataclass
class Polygon:
    points: list[tuple[float, float]]


@dataclass
class Box:
    xtl: float
    ytl: float
    xbr: float
    ybr: float


@dataclass
class Points:
    points: list[tuple[float, float]]


@dataclass
class Mask:
    """A bitmap mask: ``bitmap`` (bool, h x w) placed with its top-left pixel at (left, top).

    This is CVAT's own mask model (``<mask left= top= width= height=>``); a full-image mask
    is the special case left = top = 0.
    """

    bitmap: np.ndarray
    left: int = 0
    top: int = 0

    @property
    def width(self) -> int:
        return int(self.bitmap.shape[1])

    @property
    def height(self) -> int:
        return int(self.bitmap.shape[0])

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Mask)
            and self.left == other.left
            and self.top == other.top
            and self.bitmap.shape == other.bitmap.shape
            and bool(np.array_equal(self.bitmap.astype(bool), other.bitmap.astype(bool)))
        )


Geometry = Union[Polygon, Box, Points, Mask]


@dataclass
class Instance:
    """One annotated object (a cell): a label and a geometry, with CVAT's extras."""

    label: str
    geometry: Geometry
    score: float | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    occluded: bool = False
    z_order: int = 0
    group: int | None = None
    source: str = "manual"


@dataclass
class ImageAnnotation:
    name: str
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    id: int | None = None


@dataclass
class AttributeSpec:
    """A CVAT label attribute (``<attribute>`` in ``<meta>``)."""

    name: str
    input_type: str = "text"  # select, radio, checkbox, number, text
    values: list[str] = field(default_factory=list)
    default: str = ""
    mutable: bool = False


@dataclass
class LabelSpec:
    name: str
    attributes: list[AttributeSpec] = field(default_factory=list)
    color: str | None = None
    type: str = "any"


@dataclass
class Dataset:
    """Images with their instances, and the label declarations when the format has them."""

    images: list[ImageAnnotation] = field(default_factory=list)
    labels: list[LabelSpec] = field(default_factory=list)
    # What a reader or writer left out, and why: {"image": name, "label": label, "reason": ...}
    skipped: list[dict] = field(default_factory=list)

    def label_names(self) -> list[str]:
        """Declared labels, else the labels used, in first-seen order."""
        if self.labels:
            return [label.name for label in self.labels]
        seen: dict[str, None] = {}
        for image in self.images:
            for inst in image.instances:
                seen.setdefault(inst.label, None)
        return list(seen)

    def all_label_names(self) -> list[str]:
        """Declared labels, then any used but not declared (a writer needs an id for each)."""
        names = self.label_names()
        used = [inst.label for image in self.images for inst in image.instances]
        return names + [n for n in dict.fromkeys(used) if n not in set(names)]
