"""Masked single-cell crops: the classifier's input, made the same way everywhere.

export --crops, crop, the pipeline and training all call :func:`cell_crop`, so a model sees
at inference exactly what it saw in training.
"""
from __future__ import annotations

import cv2
import numpy as np

# Outside the cell mask: a neutral grey, neither slide-white nor stain-dark.
BACKGROUND = (128, 128, 128)
MARGIN = 0.1  # fraction of the cell's larger side added on each side


def cell_crop(
    image: np.ndarray,
    mask: np.ndarray,
    left: int = 0,
    top: int = 0,
    size: int | None = None,
    margin: float = MARGIN,
    background: tuple[int, int, int] | None = BACKGROUND,
) -> np.ndarray:
    """Square crop of one cell, background outside its mask set to ``background``.

    ``mask`` is a bool bitmap whose top-left pixel sits at (left, top) in ``image``; it may be
    a full-image mask (left = top = 0). The square is centred on the mask's bounding box,
    padded by ``margin`` and with ``background`` where it leaves the image. ``size`` resizes
    the result (area interpolation when shrinking). ``background=None`` keeps the context.
    """
    mask = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("empty mask: no cell to crop")
    y0, y1 = ys.min() + top, ys.max() + top + 1
    x0, x1 = xs.min() + left, xs.max() + left + 1
    side = max(y1 - y0, x1 - x0)
    side = int(round(side * (1 + 2 * margin)))
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    sy, sx = int(round(cy - side / 2)), int(round(cx - side / 2))
    fill = BACKGROUND if background is None else background
    out = np.empty((side, side, 3), dtype=np.uint8)
    out[:] = fill
    h, w = image.shape[:2]
    iy0, iy1 = max(sy, 0), min(sy + side, h)
    ix0, ix1 = max(sx, 0), min(sx + side, w)
    if iy1 > iy0 and ix1 > ix0:
        out[iy0 - sy:iy1 - sy, ix0 - sx:ix1 - sx] = image[iy0:iy1, ix0:ix1]
    if background is not None:
        inside = np.zeros((side, side), dtype=bool)
        my0, mx0 = top - sy, left - sx  # mask origin in crop coordinates
        mh, mw = mask.shape
        cy0, cy1 = max(my0, 0), min(my0 + mh, side)
        cx0, cx1 = max(mx0, 0), min(mx0 + mw, side)
        if cy1 > cy0 and cx1 > cx0:
            inside[cy0:cy1, cx0:cx1] = mask[cy0 - my0:cy1 - my0, cx0 - mx0:cx1 - mx0]
        out[~inside] = background
    if size is not None and side != size:
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out = cv2.resize(out, (size, size), interpolation=interp)
    return out


def resize_square(crop: np.ndarray, size: int) -> np.ndarray:
    """Pad a crop to a square with the crop background grey, then resize to size x size."""
    h, w = crop.shape[:2]
    if h != w:
        side = max(h, w)
        out = np.empty((side, side, 3), dtype=np.uint8)
        out[:] = BACKGROUND
        y0, x0 = (side - h) // 2, (side - w) // 2
        out[y0:y0 + h, x0:x0 + w] = crop
        crop = out
    if crop.shape[0] != size:
        interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (size, size), interpolation=interp)
    return crop
