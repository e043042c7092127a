"""The thesis's Algorithm 1 (HSV threshold, dilation, distance transform, watershed),
generalized from single-cell PBC images to whole smear fields.

Steps, all vectorized OpenCV on a working copy rescaled to a fixed size so that the pixel
parameters mean the same thing on a 640x480 field and on a 4032x3024 photograph:

1. nuclei: hue in the thesis's violet band (100-300 degrees; OpenCV stores hue/2, so 50-150)
   with value inside (20, 245), and saturation above an Otsu split of those pixels (at least
   50): the strongly stained part.
2. cell stain: nuclei plus pixels bluer than the slide (Lab b* at least 8 below the image's
   median). Measured on BCCD/JTSC masks, the pale cytoplasm fails the thesis's saturation
   test on light smears, but it is clearly bluer than red cells and background.
3. cells: the stain opened (noise), dilated 3 iterations (thesis) and eroded back (a closing
   that joins nucleus lobes and cytoplasm), holes filled; Euclidean distance transform; peaks
   at least ``min_distance`` apart (thesis: 20 px) are the markers (connected components of
   the peaks) of a watershed that splits touching cells.
4. one instance per WBC: watershed regions sharing a nucleus component are merged (lobes of
   one neutrophil); regions with too little nucleus (red cells, platelets, debris) or too
   small for a WBC are dropped.

``centre_cell_mask`` is the single-cell form (PBC, JTSC): the component holding the nucleus
nearest the image centre, after an opening that cuts narrow necks to touching red cells.
Rapid stains colour nuclei magenta (JTSC, ~305 degrees): when the thesis band finds no
nucleus, a wider band (100-335) is tried.
"""
from __future__ import annotations

import cv2
import numpy as np

from .base import Detection, check_image, detection_from_full, paste_mask

# Thesis thresholds (degrees, 0-255 S and V), translated to OpenCV's hue = degrees / 2.
HUE_DEG = (100.0, 300.0)
# Rapid stains (JTSC) colour nuclei magenta (~305-330 degrees): single-cell images retry with
# this band when the thesis band finds no nucleus near the centre.
HUE_DEG_WIDE = (100.0, 335.0)
SAT_RANGE = (20, 245)
VAL_RANGE = (20, 245)
DILATE_ITERATIONS = 3

# Working sizes: fields are processed at a BCCD-like 640 px long side, single-cell images at
# PBC's 360 px. The pixel parameters below are for those sizes.
FIELD_LONG_SIDE = 640
CELL_LONG_SIDE = 360
MIN_DISTANCE = 20          # thesis: peaks at least 20 px apart (PBC scale)
MIN_NUCLEUS_SAT = 50       # a nucleus is at least this saturated, whatever Otsu says
NECK_RADIUS = 9            # necks to touching red cells are narrower than 2x this
BLUE_MARGIN = 8            # cytoplasm: Lab b* at least this much below the slide's median


def _resize(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if abs(scale - 1) < 1e-3:
        return image, 1.0
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=interp), scale


def _disk(radius: int) -> np.ndarray:
    radius = max(int(radius), 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes: everything not reachable from the border through background."""
    m = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(m)
    cv2.drawContours(out, contours, -1, 1, thickness=-1)
    return out.astype(bool)


def stain_masks(rgb: np.ndarray, blue_margin: float = BLUE_MARGIN, hue_deg: tuple[float, float] = HUE_DEG) -> tuple[np.ndarray, np.ndarray]:
    """(cell, nucleus) bool masks of an RGB uint8 image.

    ``nucleus``: the thesis's HSV band, the strongly saturated part (Otsu split, at least
    MIN_NUCLEUS_SAT). ``cell``: the HSV band or pixels bluer than the slide: the pale
    cytoplasm fails the thesis's saturation floor on light smears, but it is bluer (lower Lab
    b*) than red cells and background, whose b* is the image's median (they fill most of it).
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    lo, hi = hue_deg[0] / 2, hue_deg[1] / 2
    violet = (h >= lo) & (h <= hi) & (v >= VAL_RANGE[0]) & (v <= VAL_RANGE[1])
    sat = s[violet]
    if sat.size > 16:
        otsu, _ = cv2.threshold(sat.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        split = max(float(otsu), MIN_NUCLEUS_SAT)
    else:
        split = MIN_NUCLEUS_SAT
    nucleus = violet & (s >= split)
    b = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 2]
    bluish = b <= np.median(b) - blue_margin
    return bluish | nucleus, nucleus


def _cells_from_stain(stained: np.ndarray, nucleus: np.ndarray, unit: float) -> np.ndarray:
    """Whole-cell foreground: stain joined around nuclei (dilated, closed, holes filled)."""
    k = _disk(round(2 * unit))
    nucleus = cv2.morphologyEx(nucleus.astype(np.uint8), cv2.MORPH_OPEN, _disk(round(1.5 * unit)))
    fg = cv2.morphologyEx(stained.astype(np.uint8), cv2.MORPH_OPEN, k)
    fg = cv2.dilate(fg | nucleus, _disk(round(unit)), iterations=DILATE_ITERATIONS)
    fg = cv2.erode(fg, _disk(round(unit)), iterations=DILATE_ITERATIONS)  # closing: keep the outline
    return _fill_holes(fg > 0), nucleus > 0


def _watershed(fg: np.ndarray, min_distance: float) -> np.ndarray:
    """Label image of fg split at distance-transform peaks >= min_distance apart."""
    fg8 = fg.astype(np.uint8)
    dist = cv2.distanceTransform(fg8, cv2.DIST_L2, 5)
    size = 2 * int(round(min_distance)) + 1
    local_max = cv2.dilate(dist, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    peaks = (dist >= local_max) & (dist > 0.3 * min_distance)
    n, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    markers = markers.astype(np.int32) + 1          # 1 = background marker
    markers[(fg8 > 0) & ~peaks] = 0                 # unknown: let watershed decide
    relief = cv2.normalize(-dist, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    labels = cv2.watershed(cv2.merge([relief, relief, relief]), markers)
    labels[labels <= 1] = 0                         # background and ridges
    labels[~fg] = 0
    return labels - (labels > 0)                    # regions 1..n


def _instances(labels: np.ndarray, nucleus: np.ndarray, min_area: float, min_nucleus_frac: float) -> list[np.ndarray]:
    """One mask per WBC: merge regions sharing a nucleus component, drop nucleus-poor ones."""
    n_nuc, nuc_cc = cv2.connectedComponents(nucleus.astype(np.uint8), connectivity=8)
    n_reg = int(labels.max())
    if n_reg == 0:
        return []
    # Union-find over regions joined by a nucleus component that touches both.
    parent = list(range(n_reg + 1))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    pairs = np.stack([labels[nucleus], nuc_cc[nucleus]], axis=1)
    pairs = pairs[pairs[:, 0] > 0]
    if pairs.size:
        pairs = np.unique(pairs, axis=0)
        first: dict[int, int] = {}
        for region, comp in pairs.tolist():
            if comp in first:
                ra, rb = find(first[comp]), find(region)
                if ra != rb:
                    parent[rb] = ra
            else:
                first[comp] = region
    roots = np.array([find(i) for i in range(n_reg + 1)])
    merged = roots[labels]
    merged[labels == 0] = 0
    area = np.bincount(merged.ravel(), minlength=n_reg + 1)
    nuc_area = np.bincount(merged[nucleus].ravel(), minlength=n_reg + 1)
    keep = [
        r for r in np.unique(merged[merged > 0])
        if area[r] >= min_area and nuc_area[r] >= min_nucleus_frac * area[r]
    ]
    return [merged == r for r in keep]


class ClassicalSegmenter:
    """Watershed segmenter, no learned weights. Parameters are in working-size pixels."""

    name = "classical"

    def __init__(self, long_side: int = FIELD_LONG_SIDE, min_distance: float = MIN_DISTANCE,
                 min_cell_area: float = 1500.0, min_nucleus_frac: float = 0.15):
        self.long_side = long_side
        self.min_distance = min_distance
        self.min_cell_area = min_cell_area
        self.min_nucleus_frac = min_nucleus_frac

    def segment(self, image: np.ndarray, threshold: float = 0.5) -> list[Detection]:
        image = check_image(image)
        h, w = image.shape[:2]
        small, scale = _resize(image, self.long_side)
        unit = self.long_side / FIELD_LONG_SIDE
        stained, nucleus = stain_masks(small)
        fg, nucleus = _cells_from_stain(stained, nucleus, unit)
        labels = _watershed(fg, self.min_distance * unit)
        masks = _instances(labels, nucleus, self.min_cell_area * unit**2, self.min_nucleus_frac)
        out = []
        for m in masks:
            score = _score(m, nucleus)
            if score < threshold:
                continue
            if scale == 1.0:
                det = detection_from_full(m, score)
            else:
                ys, xs = np.nonzero(m)
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                cropped = paste_mask(m.astype(np.float32), box, scale, (h, w))
                det = None if cropped is None else Detection(cropped, score)
            if det is not None:
                out.append(det)
        return out

    def segment_single_cell(self, image: np.ndarray, threshold: float = 0.5) -> list[Detection]:
        """Single-cell images (PBC, JTSC): the centre cell by :func:`centre_cell_mask`."""
        mask = centre_cell_mask(image)
        det = None if mask is None else detection_from_full(mask, 1.0)
        return [det] if det is not None else []


def _score(mask: np.ndarray, nucleus: np.ndarray) -> float:
    """A plain confidence: how much of the cell is nucleus-stained, saturating at 30%."""
    frac = float(nucleus[mask].mean()) if mask.any() else 0.0
    return min(1.0, 0.5 + frac / 0.6)


def _upscale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bool mask resized to (w, h) with smooth edges (linear interpolation, 0.5 cut)."""
    up = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    return up >= 0.5


def centre_cell_mask(image: np.ndarray) -> np.ndarray | None:
    """Whole-cell mask (bool, image size) of the cell at the centre of a single-cell image
    (PBC 360x363, JTSC 120x120 ...), or None when no stained cell is near the centre."""
    image = check_image(image)
    for band in (HUE_DEG, HUE_DEG_WIDE):
        mask = _centre_cell_mask(image, band)
        if mask is not None:
            return mask
    return None


def _centre_cell_mask(image: np.ndarray, hue_deg: tuple[float, float]) -> np.ndarray | None:
    h, w = image.shape[:2]
    small, scale = _resize(image, CELL_LONG_SIDE)
    sh, sw = small.shape[:2]
    unit = CELL_LONG_SIDE / 360
    stained, nucleus = stain_masks(small, hue_deg=hue_deg)
    fg, nucleus = _cells_from_stain(stained, nucleus, unit)
    # Cut the narrow necks to touching red cells: opening with a disk wider than a neck.
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, _disk(round(NECK_RADIUS * unit)))
    n, cc = cv2.connectedComponents(fg, connectivity=8)
    if n <= 1:
        return None
    # The cell that holds the nucleus nearest the centre.
    cy, cx = sh / 2, sw / 2
    yy, xx = np.nonzero(nucleus & (cc > 0))
    if yy.size == 0:
        return None
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    near = d2 <= np.percentile(d2, 5) if d2.size > 20 else d2 <= d2.min()
    label = np.bincount(cc[yy[near], xx[near]]).argmax()
    if np.sqrt(d2.min()) > 0.35 * max(sh, sw):
        return None
    mask = cc == label
    if mask.sum() < 0.01 * sh * sw:
        return None
    return mask if scale == 1.0 else _upscale_mask(mask, (w, h))
