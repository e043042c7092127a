"""The cell of a single-cell image (PBC 360x363, JTSC 120x120, another lab's crop, a masked
crop): one code path for ``classify``, ``crop`` and ``evaluate segmenter``.

A scale-aware segmenter (Mask R-CNN, ``scale="auto"`` or a given cell size) measures the cell
and resamples and mirror-pads the image itself (cvat_tools/scale.py, segment/tiling.py), so
the image goes to it as it is; its instance nearest the centre is the cell. The classical
centre_cell_mask answers only when the segmenter finds nothing. Segmenters without scale
estimation get the old treatment: upscaled by ``upscale`` onto a mirrored 640x480 field.
"""
from __future__ import annotations

import cv2
import numpy as np

from .base import Detection, Segmenter, check_image, detection_from_full

FIELD = (640, 480)
# JTSC cells are ~81 px across (median), BCCD's ~135 px: 135 / 81.
JTSC_UPSCALE = 1.67
INSIDE_FRACTION = 0.6


def as_field(image: np.ndarray, upscale: float, field: tuple[int, int] = FIELD) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(canvas, (x0, y0, w, h)): the upscaled image pasted at (x0, y0) with size w x h."""
    h, w = image.shape[:2]
    uw, uh = max(1, round(w * upscale)), max(1, round(h * upscale))
    big = cv2.resize(image, (uw, uh), interpolation=cv2.INTER_CUBIC if upscale > 1 else cv2.INTER_AREA)
    fw, fh = max(field[0], uw), max(field[1], uh)
    x0, y0 = (fw - uw) // 2, (fh - uh) // 2
    # Mirrored copies of the crop around it look like a smear field (cells all around); a flat
    # colour does not, and the learned model then misses the cell.
    canvas = cv2.copyMakeBorder(big, y0, fh - uh - y0, x0, fw - uw - x0, cv2.BORDER_REFLECT)
    return canvas, (x0, y0, uw, uh)


def segment_single_cell(segmenter: Segmenter, image: np.ndarray, upscale: float = JTSC_UPSCALE,
                        threshold: float = 0.5) -> list[Detection]:
    """Detections of ``segmenter`` on a small single-cell image, in that image's pixels."""
    image = check_image(image)
    own = getattr(segmenter, "segment_single_cell", None)
    if own is not None:  # the classical segmenter has the thesis's single-cell algorithm
        return own(image, threshold=threshold)
    if getattr(segmenter, "scale_mode", None) == "auto" or getattr(segmenter, "cell_size", None) \
            or getattr(segmenter, "um_per_px", None):
        return segmenter.segment(image, threshold=threshold)
    h, w = image.shape[:2]
    canvas, (x0, y0, uw, uh) = as_field(image, upscale)
    out = []
    for det in segmenter.segment(canvas, threshold=threshold):
        whole = det.full_mask(*canvas.shape[:2])
        full = whole[y0:y0 + uh, x0:x0 + uw]
        # Cells found in the mirrored surroundings are copies: keep a detection only when most
        # of it lies in the image itself.
        if full.sum() < INSIDE_FRACTION * whole.sum():
            continue
        small = cv2.resize(full.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
        mapped = detection_from_full(small, det.score, det.label)
        if mapped is not None:
            out.append(mapped)
    return out


def centre_detection(detections: list[Detection], height: int, width: int) -> Detection | None:
    """The detection whose box centre is nearest the image centre: the cell a single-cell
    image (PBC, a crop) was taken for."""
    def dist(d: Detection) -> float:
        x1, y1, x2, y2 = d.box
        return ((x1 + x2) / 2 - width / 2) ** 2 + ((y1 + y2) / 2 - height / 2) ** 2
    return min(detections, key=dist) if detections else None


SINGLE_CELL_THRESHOLD = 0.3  # a single-cell image holds its cell: a low bar finds pale ones


def centre_cell(segmenter: Segmenter | None, image: np.ndarray,
                threshold: float = SINGLE_CELL_THRESHOLD) -> tuple[Detection | None, str]:
    """(the cell a single-cell image was taken for, where its mask came from): "segmenter"
    (its centre instance), "classical" (centre_cell_mask, when the segmenter finds none or
    there is no segmenter) or "none"."""
    image = check_image(image)
    h, w = image.shape[:2]
    if segmenter is not None:
        det = centre_detection(segment_single_cell(segmenter, image, threshold=threshold), h, w)
        if det is not None:
            return det, "segmenter"
    from .classical import centre_cell_mask

    mask = centre_cell_mask(image)
    det = detection_from_full(mask, 0.0) if mask is not None else None
    return (det, "classical") if det is not None else (None, "none")
