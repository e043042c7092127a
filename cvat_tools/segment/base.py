"""What every segmenter gives back, and how to get the default one.

A segmenter takes an RGB uint8 image of any size and returns one :class:`Detection` per WBC:
a bool mask cropped to the cell's box (placed at left/top in image pixels) and a score.
Cropped masks keep memory small on 4032x3024 photographs with many cells.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
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


def paste_mask(prob: np.ndarray, box: np.ndarray, scale: float | tuple[float, float],
               full_hw: tuple[int, int], threshold: float = 0.5,
               offset: tuple[float, float] = (0.0, 0.0)) -> Mask | None:
    """Full-resolution mask of one detection, cropped to its box, from a working-size
    probability (or 0/1) map; ``box`` is x1,y1,x2,y2 in the map's pixels, ``scale`` = working /
    full size (one number, or (x, y) when rounding made the axes differ), ``offset`` = where
    the map's origin lies in the working image (a tile's corner). Only the box region is
    resampled, never the whole image."""
    h, w = full_hw
    sx, sy = (scale, scale) if np.isscalar(scale) else (float(scale[0]), float(scale[1]))
    ox, oy = offset
    ph, pw = prob.shape
    x1, y1, x2, y2 = box
    # Box in map pixels, 2 px margin, clipped; then the same region at full resolution.
    wx0, wy0 = max(int(np.floor(x1)) - 2, 0), max(int(np.floor(y1)) - 2, 0)
    wx1, wy1 = min(int(np.ceil(x2)) + 2, pw), min(int(np.ceil(y2)) + 2, ph)
    if wx1 <= wx0 or wy1 <= wy0:
        return None
    fx0, fy0 = max(int(np.floor((wx0 + ox) / sx)), 0), max(int(np.floor((wy0 + oy) / sy)), 0)
    fx1, fy1 = min(int(np.ceil((wx1 + ox) / sx)), w), min(int(np.ceil((wy1 + oy) / sy)), h)
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    crop = prob[wy0:wy1, wx0:wx1]
    if sx != 1.0 or sy != 1.0 or ox != int(ox) or oy != int(oy) or (fx0, fy0) != (wx0 + ox, wy0 + oy):
        # Sample the crop at the full-resolution pixel centres (exact map, not a stretch).
        xs = ((np.arange(fx0, fx1) + 0.5) * sx - 0.5 - ox - wx0).astype(np.float32)
        ys = ((np.arange(fy0, fy1) + 0.5) * sy - 0.5 - oy - wy0).astype(np.float32)
        mx, my = np.meshgrid(xs, ys)
        crop = cv2.remap(crop.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    else:
        crop = crop[: fy1 - fy0, : fx1 - fx0]
    bitmap = crop >= threshold
    ys_, xs_ = np.nonzero(bitmap)
    if ys_.size == 0:
        return None
    ty0, ty1, tx0, tx1 = ys_.min(), ys_.max() + 1, xs_.min(), xs_.max() + 1
    return Mask(np.ascontiguousarray(bitmap[ty0:ty1, tx0:tx1]), fx0 + int(tx0), fy0 + int(ty0))
