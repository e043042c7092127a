"""What every segmenter gives back, and how to get the default one.

A segmenter takes an RGB uint8 image of any size and returns one :class:`Detection` per WBC:
a bool mask cropped to the cell's box (placed at left/top in image pixels) and a score.
Cropped masks keep memory small on 4032x3024 photographs with many cells.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import InputError
from ..formats.annotations import Mask


@dataclass
class Detection:
    mask: Mask
    score: float
    label: str = "wbc"

    @property
    def box(self) -> tuple[int, int, int, int]:
        """x1, y1, x2, y2 in image pixels, end exclusive (the tight box of the mask)."""
        ys, xs = np.nonzero(self.mask.bitmap)
        if ys.size == 0:
            return (self.mask.left, self.mask.top, self.mask.left, self.mask.top)
        return (
            self.mask.left + int(xs.min()),
            self.mask.top + int(ys.min()),
            self.mask.left + int(xs.max()) + 1,
            self.mask.top + int(ys.max()) + 1,
        )

    def full_mask(self, height: int, width: int) -> np.ndarray:
        """The mask as a full-image bool bitmap (for metrics and overlays)."""
        out = np.zeros((height, width), dtype=bool)
        m = self.mask
        y0, x0 = max(m.top, 0), max(m.left, 0)
        y1, x1 = min(m.top + m.height, height), min(m.left + m.width, width)
        if y1 > y0 and x1 > x0:
            out[y0:y1, x0:x1] = m.bitmap[y0 - m.top:y1 - m.top, x0 - m.left:x1 - m.left]
        return out


class Segmenter(Protocol):
    name: str

    def segment(self, image: np.ndarray, threshold: float = 0.5) -> list[Detection]:
        ...


def check_image(image: np.ndarray) -> np.ndarray:
    """The segmenters' input contract: RGB uint8 H x W x 3 (imaging.load_image gives it)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"segmenters take RGB uint8 images (H x W x 3), got {image.dtype} {image.shape}; "
            "read files with cvat_tools.imaging.load_image"
        )
    if min(image.shape[:2]) < 8:
        raise InputError(f"image of {image.shape[1]}x{image.shape[0]} px is too small to segment")
    return image


def detection_from_full(full: np.ndarray, score: float, label: str = "wbc") -> Detection | None:
    """A Detection from a full-image bool mask, cropped to its box (None when empty)."""
    ys, xs = np.nonzero(full)
    if ys.size == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return Detection(Mask(np.ascontiguousarray(full[y0:y1, x0:x1]), int(x0), int(y0)), float(score), label)


def load_segmenter(bundle: str | Path | None = None, device: str = "cpu") -> Segmenter:
    """The segmenter of ``bundle``; with None, the shipped Mask R-CNN if present, else the
    classical watershed segmenter."""
    from ..bundle import shipped_bundle

    if bundle is None:
        bundle = shipped_bundle("segmenter")
        if bundle is None:
            from .classical import ClassicalSegmenter

            return ClassicalSegmenter()
    from .maskrcnn import MaskRCNNSegmenter

    return MaskRCNNSegmenter.from_bundle(bundle, device=device)
