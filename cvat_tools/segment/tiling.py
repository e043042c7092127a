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


def _window(box: tuple[float, float, float, float], margin: float, cw: int, ch: int,
            align: int = 32) -> tuple[int, int, int, int]:
    """A blob's box grown by ``margin`` (a whole WBC and some context around its nucleus),
    sides rounded up to ``align`` (the model pads to it anyway), inside the canvas."""
    x0, y0, x1, y1 = box

    def side(lo: float, hi: float, length: int) -> tuple[int, int]:
        size = min(length, math.ceil((hi - lo + 2 * margin) / align) * align)
        start = int(round((lo + hi - size) / 2))
        start = min(max(start, 0), length - size)
        return start, start + size

    (wx0, wx1), (wy0, wy1) = side(x0, x1, cw), side(y0, y1, ch)
    return wx0, wy0, wx1, wy1


def _union(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _area(r: tuple[int, ...]) -> int:
    return (r[2] - r[0]) * (r[3] - r[1])


def _merge_windows(wins: list[tuple[int, int, int, int]], tile: int) -> list[tuple[int, int, int, int]]:
    """Overlapping windows joined while one window costs no more than two (the model's time
    grows with pixels) and stays within one tile."""
    wins = list(wins)
    merged = True
    while merged:
        merged = False
        for i in range(len(wins)):
            for j in range(i + 1, len(wins)):
                u = _union(wins[i], wins[j])
                if (u[2] - u[0] <= tile and u[3] - u[1] <= tile
                        and _area(u) <= _area(wins[i]) + _area(wins[j])):
                    wins[i] = u
                    del wins[j]
                    merged = True
                    break
            if merged:
                break
    return wins


def plan_windows(boxes: list[tuple[float, float, float, float]], width: int, height: int,
                 margin: float, tile: int = TILE) -> list[Tile]:
    """Windows around candidate boxes (canvas px) of a width x height canvas. A window owns
    the box centres of its interior (``margin`` / 2 in from each inner side): a cell cut by
    an inner side is some other window's, or lies whole elsewhere in this one."""
    wins = _merge_windows([_window(b, margin, width, height) for b in boxes], tile)
    inset = margin / 2
    out = []
    for x0, y0, x1, y1 in wins:
        if x1 - x0 > tile or y1 - y0 > tile:  # a stained region larger than a tile: tile it
            out += [Tile(t.x0 + x0, t.y0 + y0, t.x1 + x0, t.y1 + y0,
                         t.cx0 + x0 + (inset if t.x0 == 0 and x0 > 0 else 0),
                         t.cy0 + y0 + (inset if t.y0 == 0 and y0 > 0 else 0),
                         t.cx1 + x0 - (inset if t.x1 == x1 - x0 and x1 < width else 0),
                         t.cy1 + y0 - (inset if t.y1 == y1 - y0 and y1 < height else 0))
                    for t in plan_tiles(x1 - x0, y1 - y0, tile, int(2 * margin))]
            continue
        out.append(Tile(x0, y0, x1, y1,
                        x0 + inset if x0 > 0 else 0.0, y0 + inset if y0 > 0 else 0.0,
                        x1 - inset if x1 < width else float(width),
                        y1 - inset if y1 < height else float(height)))
    return out


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


Screen = Callable[[], list[tuple[float, float, float, float]]]


def _plan(cw: int, ch: int, tile: int, overlap: int, screen: Screen | None,
          to_canvas: Callable[[tuple[float, ...]], tuple[float, ...]]) -> tuple[list[Tile], int | None]:
    """(tiles to run, candidate boxes kept or None when every tile runs). A canvas larger
    than one tile is screened first (``screen``: nucleus boxes in input px); only windows
    around the candidates run when they cost less than the tiles."""
    tiles = plan_tiles(cw, ch, tile, overlap)
    if screen is None or len(tiles) == 1:
        return tiles, None
    boxes = [to_canvas(b) for b in screen()]
    # overlap = 1.5 WBC diameters (segment/maskrcnn.py): the margin is 0.75, a whole cell
    # around any part of its nucleus
    windows = plan_windows(boxes, cw, ch, margin=overlap / 2, tile=tile)
    cost = sum((t.x1 - t.x0) * (t.y1 - t.y0) for t in windows)
    if cost >= sum((t.x1 - t.x0) * (t.y1 - t.y0) for t in tiles):
        return tiles, len(boxes)
    return windows, len(boxes)


def segment_resampled(detect: Detector, image: np.ndarray, factor: float, threshold: float,
                      mask_threshold: float = 0.5, overlap: int = 160, tile: int = TILE,
                      prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                      min_canvas: tuple[int, int] = MIN_CANVAS, screen: Screen | None = None,
                      stats: dict | None = None) -> list[Detection]:
    """Detections of ``detect`` on ``image`` resampled by ``factor``, in ``image`` pixels.
    ``screen`` (optional): candidate WBC boxes in input px; on a canvas of several tiles
    only windows around them run. ``stats`` (optional) receives the tiles run / planned."""
    h, w = image.shape[:2]
    work, scale = resample(image, factor)
    if prepare is not None:
        work = prepare(work)
    wh, ww = work.shape[:2]
    px, py = max(0, (min_canvas[0] - ww + 1) // 2), max(0, (min_canvas[1] - wh + 1) // 2)
    canvas = cv2.copyMakeBorder(work, py, py, px, px, cv2.BORDER_REFLECT) if px or py else work
    ch, cw = canvas.shape[:2]

    def to_canvas(b: tuple[float, ...]) -> tuple[float, ...]:
        return (b[0] * scale[0] + px, b[1] * scale[1] + py, b[2] * scale[0] + px, b[3] * scale[1] + py)

    plan, screened = _plan(cw, ch, tile, overlap, screen, to_canvas)
    if stats is not None:
        stats.update(tiles_run=len(plan), tiles_full=len(plan_tiles(cw, ch, tile, overlap)),
                     candidates=screened, pixels_run=sum((t.x1 - t.x0) * (t.y1 - t.y0) for t in plan),
                     canvas_pixels=cw * ch)
    candidates: list[_Candidate] = []
    for t in plan:
        found = detect(np.ascontiguousarray(canvas[t.y0:t.y1, t.x0:t.x1]))
        candidates += _tile_candidates(found, t, threshold, (cw, ch), (px, py, ww, wh),
                                       lambda prob, box: paste_mask(prob, box, scale, (h, w), mask_threshold,
                                                                    offset=(t.x0 - px, t.y0 - py)))
    return merge(candidates)


def _tile_candidates(found, t: Tile, threshold: float, canvas_wh: tuple[int, int],
                     real: tuple[int, int, int, int], paste) -> list[_Candidate]:
    """The merge candidates of one tile's detections (``real``: the image's place in the
    canvas, px, py, w, h; ``paste``: (prob, box) -> full-resolution Mask or None)."""
    cw, ch = canvas_wh
    px, py, ww, wh = real
    out = []
    for box, score, prob in zip(*found):
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
        mask = paste(prob, box)
        if mask is not None:
            out.append(_Candidate(Detection(mask, float(score)), owned, cut, int(mask.bitmap.sum())))
    return out
