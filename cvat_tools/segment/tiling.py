"""Resample an image by a factor, run a detector over overlapping tiles, merge, paste back.

Why tiles: a field resampled so its WBCs have the trained size can be far larger than the
working size (a 4032x3024 photograph with 150-px WBCs becomes ~2800x2100), and one forward
pass over it would need gigabytes. Tiles of at most :data:`TILE` working px overlap by at
least 1.5 canonical WBC diameters, so every cell lies whole in the tile whose *core* (the
tile minus half of each overlap) holds its box centre; that tile's instance is kept. Cut
pieces (touching an inner tile edge) from other tiles and duplicates are dropped by mask
overlap. Each mask is pasted to full resolution cropped to its box (segment/base.py
:func:`paste_mask`), so memory is bounded by the working image plus one tile.

Small working images (a single-cell image, a crop) are mirror-padded to :data:`MIN_CANVAS`:
the learned model expects cells all around (a flat border makes it miss the cell); detections
lying mostly in the mirrored border are copies and are dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..formats.annotations import Mask
from .base import Detection, paste_mask

TILE = 768  # working px; larger tiles waste less on overlap, smaller bound memory
MIN_CANVAS = (384, 288)  # (w, h) the model's trained field at working size (long side 384)
INSIDE_FRACTION = 0.6  # of a detection's box area inside the real image (not the mirror)
DUPLICATE_IOU = 0.3  # mask IoU above which two instances are one cell
DUPLICATE_IOS = 0.6  # intersection over the smaller mask: a cut piece inside the whole cell
EDGE_PX = 2  # a box within this many working px of an inner tile edge is cut there

# detector(tile RGB uint8) -> (boxes N x 4 in tile px, scores N, mask probabilities N x h x w)
Detector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Tile:
    x0: int
    y0: int
    x1: int
    y1: int
    # core: the box centres this tile owns (half-open), in canvas px
    cx0: float
    cy0: float
    cx1: float
    cy1: float


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def plan_tiles(width: int, height: int, tile: int = TILE, overlap: int = 160) -> list[Tile]:
    """Tiles covering a width x height canvas, neighbours overlapping by >= ``overlap``."""
    if overlap >= tile:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    xs, ys = _starts(width, tile, overlap), _starts(height, tile, overlap)
    tw, th = min(tile, width), min(tile, height)

    def cores(starts: list[int], size: int, length: int) -> list[tuple[float, float]]:
        out = []
        for i, s in enumerate(starts):
            lo = 0.0 if i == 0 else (s + starts[i - 1] + size) / 2
            hi = float(length) if i == len(starts) - 1 else (s + size + starts[i + 1]) / 2
            out.append((lo, hi))
        return out

    cx, cy = cores(xs, tw, width), cores(ys, th, height)
    return [Tile(x, y, x + tw, y + th, cxa, cya, cxb, cyb)
            for y, (cya, cyb) in zip(ys, cy) for x, (cxa, cxb) in zip(xs, cx)]


def resample(image: np.ndarray, factor: float) -> tuple[np.ndarray, tuple[float, float]]:
    """(image resized by ``factor``, exact (x, y) scales after rounding the size)."""
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if size == (w, h):
        return image, (1.0, 1.0)
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp), (size[0] / w, size[1] / h)


@dataclass
class _Candidate:
    det: Detection
    owned: bool  # box centre in the tile's core
    cut: bool  # touches an inner tile edge
    area: int


def _overlap(a: Mask, b: Mask) -> tuple[int, int]:
    """(intersection, union) of two cropped masks, computed on their boxes' overlap only."""
    x0, y0 = max(a.left, b.left), max(a.top, b.top)
    x1, y1 = min(a.left + a.width, b.left + b.width), min(a.top + a.height, b.top + b.height)
    sa, sb = int(a.bitmap.sum()), int(b.bitmap.sum())
    if x1 <= x0 or y1 <= y0:
        return 0, sa + sb
    pa = a.bitmap[y0 - a.top:y1 - a.top, x0 - a.left:x1 - a.left]
    pb = b.bitmap[y0 - b.top:y1 - b.top, x0 - b.left:x1 - b.left]
    inter = int(np.logical_and(pa, pb).sum())
    return inter, sa + sb - inter


def merge(candidates: list[_Candidate]) -> list[Detection]:
    """One instance per cell: the owning, uncut, best-scoring one wins; overlapping others go."""
    order = sorted(candidates, key=lambda c: (c.cut, not c.owned, -c.det.score))
    kept: list[_Candidate] = []
    for c in order:
        if c.cut and not c.owned:
            continue  # a piece of a cell whose own tile is elsewhere
        dup = False
        for k in kept:
            inter, union = _overlap(c.det.mask, k.det.mask)
            if inter and (inter / union > DUPLICATE_IOU or inter / min(c.area, k.area) > DUPLICATE_IOS):
                dup = True
                break
        if not dup:
            kept.append(c)
    return [c.det for c in sorted(kept, key=lambda c: -c.det.score)]


def segment_resampled(detect: Detector, image: np.ndarray, factor: float, threshold: float,
                      mask_threshold: float = 0.5, overlap: int = 160, tile: int = TILE,
                      prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                      min_canvas: tuple[int, int] = MIN_CANVAS) -> list[Detection]:
    """Detections of ``detect`` on ``image`` resampled by ``factor``, in ``image`` pixels."""
    h, w = image.shape[:2]
    work, scale = resample(image, factor)
    if prepare is not None:
        work = prepare(work)
    wh, ww = work.shape[:2]
    px, py = max(0, (min_canvas[0] - ww + 1) // 2), max(0, (min_canvas[1] - wh + 1) // 2)
    canvas = cv2.copyMakeBorder(work, py, py, px, px, cv2.BORDER_REFLECT) if px or py else work
    ch, cw = canvas.shape[:2]
    candidates: list[_Candidate] = []
    for t in plan_tiles(cw, ch, tile, overlap):
        piece = np.ascontiguousarray(canvas[t.y0:t.y1, t.x0:t.x1])
        boxes, scores, probs = detect(piece)
        for box, score, prob in zip(boxes, scores, probs):
            if score < threshold:
                continue
            bx0, by0, bx1, by1 = (float(v) for v in box)
            gx0, gy0, gx1, gy1 = bx0 + t.x0, by0 + t.y0, bx1 + t.x0, by1 + t.y0  # canvas px
            if px or py:  # mostly in the mirrored border: a copy of a real cell
                ix = max(0.0, min(gx1, px + ww) - max(gx0, px))
                iy = max(0.0, min(gy1, py + wh) - max(gy0, py))
                if ix * iy < INSIDE_FRACTION * max((gx1 - gx0) * (gy1 - gy0), 1e-6):
                    continue
            mcx, mcy = (gx0 + gx1) / 2, (gy0 + gy1) / 2
            owned = t.cx0 <= mcx < t.cx1 and t.cy0 <= mcy < t.cy1
            cut = ((t.x0 > 0 and bx0 <= EDGE_PX) or (t.y0 > 0 and by0 <= EDGE_PX)
                   or (t.x1 < cw and bx1 >= t.x1 - t.x0 - EDGE_PX)
                   or (t.y1 < ch and by1 >= t.y1 - t.y0 - EDGE_PX))
            mask = paste_mask(prob, box, scale, (h, w), mask_threshold,
                              offset=(t.x0 - px, t.y0 - py))
            if mask is not None:
                candidates.append(_Candidate(Detection(mask, float(score)), owned, cut,
                                             int(mask.bitmap.sum())))
    return merge(candidates)
