"""Apparent cell size of an image -> the resample factor that gives WBCs their trained size.

The learned segmenter saw WBCs at one size (BCCD fields at its working size, ±30% jitter);
cameras and objectives differ by 5x or more in pixels per cell. So each image is measured
first, with a fast classical pass (~20 ms on a 640x480 field, ~0.3 s on 12 MP), and
resampled so its WBCs land at :func:`canonical_wbc_px`.

Method ("red_cells"): red cells are ~7.5 um across in every smear (WBCs ~12-15 um) and a field
holds many of them, so their size is a stable ruler. The image is resized to an analysis
copy of :data:`ANALYSIS_LONG_SIDE` px (small images enlarged up to 4x; tiny cells in a large
photograph re-measured in a sharper central window), the slide background is found (brightest pixels), everything that
differs from it is foreground, holes (the red cells' central pallor) are filled, and the
distance transform's local maxima give each blob's inscribed radius: one peak per red cell,
also inside clumps of touching cells. The 75th-percentile peak diameter times
:data:`WBC_PER_RED_CELL` is the WBC diameter. Measured: it follows a known zoom within 15%
for 95-100% of BCCD test fields at 0.25x-4x (tests/test_scale.py); against each field's own
WBC it is within 25% for ~70% (WBC types differ by 1.5x in size). Failure modes: fewer than
:data:`MIN_RED_CELLS` peaks, or peaks covering < :data:`MIN_COVERAGE` of the foreground
(granules inside one big cell): a lone crop, a single-cell image, a blank frame; a field of
WBCs only (leukaemia smear: the ruler reads WBCs, the factor comes out ~1.8x too small; use
--cell-size); wide mosaics read ~15% large.

Fallbacks, in order, each saying why in :attr:`Scale.fallback`:
- "masked_crop": the image is a crop made by ``crops.cell_crop`` (uniform grey outside the
  cell): the cell is the non-grey region;
- "single_cell": a dominant object covers the image centre (PBC, JTSC, another lab's crop):
  its size is the WBC size;
- "field_default": no measurable cell: the image is treated as a BCCD field (long side ->
  the working size), what every image got before. When nothing stained differs from the
  background at all (a black, blank or pure-noise frame) :attr:`Scale.empty` is set and the
  segmenter reports no cell without running (a learned model sees cells in noise).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .errors import InputError

# Median WBC diameter (equivalent-circle, px) in the segmenter's working pixels. Measured on
# the BCCD train split (../shared/data/bccd_wbc, 265 WBC components of mask>0, 640x480
# fields): median 174.2 px at 640 wide; the shipped segmenter works at long side 384
# (x0.6): 104.5 px. Any bundle trained on BCCD-sized fields at long side L has 174.2 * L / 640.
BCCD_WBC_PX = 174.2
BCCD_LONG_SIDE = 640
# WBC diameter / red-cell ruler (the 75th-percentile distance-transform peak diameter of
# :func:`red_cell_diameter`): the median over BCCD train fields of each field's WBC
# equivalent diameter divided by its measured ruler (scripted in benchmarks/scale_sweep.py
# --calibrate): 1.90 (IQR 1.45-2.18, the WBC types differ too). Physically ~1.6-2
# (12-15 um / 7.5 um).
WBC_PER_RED_CELL = 1.90
MIN_RED_CELLS = 6
MIN_COVERAGE = 0.3  # of the foreground covered by the ruler's discs (see red_cell_diameter)
MAX_WORK_PIXELS = 16e6  # working-image cap: a 12 MP photo of tiny cells stays tractable
CELL_SIZE_RANGE = (8.0, 2000.0)  # --cell-size limits, px
ANALYSIS_LONG_SIDE = 640  # the estimator's working copy: bounded time on 12 MP photographs
MIN_RULER_PX = 20.0  # a ruler below this in the analysis copy is re-measured in a sharper window
# (at ~10 px, neighbours merge under the fixed-size morphology: an 8x8 mosaic of BCCD fields
# read 1.6x too large)


@dataclass
class Scale:
    """How one image is resampled for the segmenter."""

    factor: float  # resample factor: working px per input px (before tiling)
    cell_size: float | None  # WBC diameter in input px (estimated or given); None if unknown
    method: str  # "cell_size" (given), "um_per_px" (given), "red_cells", "masked_crop",
                 # "single_cell", "field_default", "fixed" (old long-side rule)
    fallback: str | None = None  # why the preferred estimate was impossible
    red_cells: int = 0  # ruler peaks found
    grayscale: bool = False
    empty: bool = False  # nothing stained differs from the background (black, blank, noise)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["factor"] = round(self.factor, 4)
        if self.cell_size is not None:
            out["cell_size"] = round(self.cell_size, 1)
        return out


def canonical_wbc_px(long_side: int) -> float:
    """WBC diameter the segmenter was trained on, in its working pixels."""
    return BCCD_WBC_PX * long_side / BCCD_LONG_SIDE


def check_cell_size(cell_size: float | None, um_per_px: float | None) -> None:
    if cell_size is not None:
        lo, hi = CELL_SIZE_RANGE
        if not (math.isfinite(cell_size) and lo <= cell_size <= hi):
            raise InputError(f"--cell-size {cell_size:g} px is outside {lo:g}-{hi:g} px "
                             "(the typical WBC diameter in the input image's pixels)")
    if um_per_px is not None:
        if not (math.isfinite(um_per_px) and um_per_px > 0):
            raise InputError(f"--um-per-px {um_per_px:g} must be a positive number")
        check_cell_size(WBC_UM / um_per_px, None)


def parse_scale_value(name: str, value: float | str | None) -> float | None:
    """A cell_size / um_per_px parameter from a string (env var, ``-p name=str:...``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None


WBC_UM = 13.0  # typical WBC diameter (neutrophil 12-15 um, lymphocyte 7-15 um)


def is_grayscale(image: np.ndarray) -> bool:
    """An RGB image whose three channels are equal (a grey copy): stain colour is gone."""
    step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / 40_000)))
    sub = image[::step, ::step].astype(np.int16)
    return bool(np.abs(sub[..., 0] - sub[..., 1]).max() <= 2 and np.abs(sub[..., 1] - sub[..., 2]).max() <= 2)


def _shrink(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """The analysis copy: long side ``long_side`` (small images are enlarged up to 4x, so
    the fixed-size morphology below sees small cells as it sees BCCD's)."""
    h, w = image.shape[:2]
    s = min(4.0, long_side / max(h, w))
    if abs(s - 1.0) < 1e-3:
        return image, 1.0
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR), s


def _foreground(image: np.ndarray, relax: float = 1.0) -> tuple[np.ndarray, float] | None:
    """(uint8 0/1 foreground, contrast) of a small RGB image: what is darker than the slide
    background (the median colour of its brightest 40%), at ``relax`` x the Otsu threshold;
    None on a flat or noise image."""
    f = image.astype(np.float32)
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    smooth = cv2.GaussianBlur(g, (0, 0), 2.0)
    if float(np.std(g - smooth)) > float(np.std(smooth)):
        return None  # pixel noise, not cells: most of the variance is at the finest scale
    sub = f[::3, ::3].reshape(-1, 3)  # statistics on a subsample: as good, 9x cheaper
    bright = sub.sum(1)
    bg = np.median(sub[bright >= np.percentile(bright, 60)], axis=0)
    dist = cv2.magnitude(*[cv2.magnitude(f[..., 0] - bg[0], f[..., 1] - bg[1]), f[..., 2] - bg[2]])
    # Cells are darker than the slide, not just different: noise is symmetric, stain is not.
    darker = np.maximum(float(bg.sum()) - f.sum(2), 0) * 0.5 + 1  # (sum / 3) * 1.5
    score = cv2.GaussianBlur(np.minimum(dist, darker), (0, 0), 1.0)
    top = float(np.percentile(score[::3, ::3], 99))
    if top < 12:  # no stained object differs visibly from the background
        return None
    u8 = cv2.convertScaleAbs(score, alpha=255.0 / top)
    t, fg = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if relax != 1.0:
        fg = (u8 >= t * relax).astype(np.uint8)
    return fg, top


def _fill_holes(fg: np.ndarray) -> np.ndarray:
    """Foreground with enclosed background (red-cell central pallor) filled."""
    h, w = fg.shape
    flood = np.pad(fg, 1).copy()
    mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, mask, (0, 0), 2)
    return ((flood[1:-1, 1:-1] != 2)).astype(np.uint8)


def red_cell_diameter(small: np.ndarray) -> tuple[float | None, int, np.ndarray | None]:
    """(median peak diameter, peaks, filled foreground) of a small RGB image."""
    got = _foreground(small)
    if got is None:
        return None, 0, None
    fg, _ = got
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # Closing first: a pale red cell's pallor often opens at its rim, and is then no hole.
    fg = _fill_holes(cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))))
    dt = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    peaks = (dt >= 2.5) & (dt >= cv2.dilate(dt, np.ones((5, 5), np.uint8)) - 1e-3)
    ys, xs = np.nonzero(peaks)
    if ys.size == 0:
        return None, 0, fg
    r = dt[ys, xs]
    order = np.argsort(-r)
    ys, xs, r = ys[order], xs[order], r[order]
    # Greedy non-maximum suppression: one peak per inscribed disc (a plateau or a ridge
    # inside one cell gives many maxima).
    taken = np.zeros(fg.shape, bool)
    kept = []
    for y, x, rad in zip(ys, xs, r):
        if taken[y, x]:
            continue
        kept.append(rad)
        cv2.circle(taken.view(np.uint8), (int(x), int(y)), int(rad), 1, -1)
    if not kept:
        return None, 0, fg
    kept_arr = np.asarray(kept)
    # Ridge remnants between cells and cut cells at the border are small peaks; a whole
    # cell's own peak is near the top of the distribution (tuned on BCCD train: the 75th
    # percentile of peaks >= 0.6 x the 90th has the least spread against the WBC size).
    big = kept_arr[kept_arr >= 0.6 * np.percentile(kept_arr, 90)]
    ruler = float(2 * np.percentile(big, 75))
    # Red cells fill most of a smear's foreground (BCCD: >= 0.41 of it, median 0.91); a few
    # small peaks in a big object are granules or texture inside one cell (JTSC: < 0.3).
    if big.size * math.pi * ruler * ruler / 4 < MIN_COVERAGE * float(fg.sum()):
        return ruler, 0, fg
    return ruler, int(big.size), fg


CYTOPLASM_RELAX = 0.6  # x Otsu: pale cytoplasm belongs to the cell (see _cell_foreground)


def _cell_foreground(small: np.ndarray) -> np.ndarray:
    """Foreground for measuring one whole cell: Otsu at full strength keeps a WBC's nucleus
    and loses its pale cytoplasm (JTSC: cell read at 0.64x its size in 5% of images, whose
    lobes the model then splits); 0.6 x the threshold keeps it (97% within 15%)."""
    fg = _foreground(small, CYTOPLASM_RELAX)[0]
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    return _fill_holes(cv2.morphologyEx(fg, cv2.MORPH_CLOSE, close))


def _centre_object(fg: np.ndarray) -> float | None:
    """Equivalent diameter of the foreground blob covering the image centre, when it is a
    dominant object (a single-cell image or crop); else None."""
    h, w = fg.shape
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return None
    cy, cx = h // 2, w // 2
    r = max(2, min(h, w) // 8)
    window = lab[cy - r:cy + r + 1, cx - r:cx + r + 1]
    ids, counts = np.unique(window[window > 0], return_counts=True)
    if ids.size == 0:
        return None
    best = int(ids[np.argmax(counts)])
    area = float(stats[best, cv2.CC_STAT_AREA])
    if area < 0.04 * h * w:
        return None
    return 2 * math.sqrt(area / math.pi)


def _masked_crop(image: np.ndarray) -> float | None:
    """Cell diameter of a ``crops.cell_crop`` output (uniform BACKGROUND outside the mask)."""
    from .crops import BACKGROUND

    h, w = image.shape[:2]
    grey = np.all(np.abs(image.astype(np.int16) - np.array(BACKGROUND, np.int16)) <= 2, axis=2)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() < 0.6 or grey.mean() < 0.1:
        return None
    cell = (~grey).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(cell, connectivity=8)
    if n <= 1:
        return None
    area = float(stats[1:, cv2.CC_STAT_AREA].max())
    return 2 * math.sqrt(area / math.pi)


def is_masked_crop(image: np.ndarray) -> bool:
    """True for a crop made by ``crops.cell_crop`` (the cell on uniform grey)."""
    return _masked_crop(_shrink(image, ANALYSIS_LONG_SIDE)[0]) is not None


def estimate_scale(image: np.ndarray, long_side: int, cell_size: float | None = None,
                   um_per_px: float | None = None, target_px: float | None = None) -> Scale:
    """The :class:`Scale` of an RGB uint8 image for a segmenter working at ``long_side``
    (``target_px``: its trained WBC diameter, default :func:`canonical_wbc_px`)."""
    target = target_px or canonical_wbc_px(long_side)
    h, w = image.shape[:2]
    grey = is_grayscale(image)
    check_cell_size(cell_size, um_per_px)
    if cell_size is not None:
        given = Scale(target / cell_size, float(cell_size), "cell_size", grayscale=grey)
        return _capped(given, h, w)
    if um_per_px is not None:
        size = WBC_UM / um_per_px
        return _capped(Scale(target / size, size, "um_per_px", grayscale=grey), h, w)
    small, s = _shrink(image, ANALYSIS_LONG_SIDE)
    crop = _masked_crop(small)
    if crop is not None:
        crop /= s
        why = "masked crop: no red cells, the cell is the non-grey region"
        return _capped(Scale(target / crop, crop, "masked_crop", why, grayscale=grey), h, w)
    ruler, peaks, fg = red_cell_diameter(small)
    if (ruler is None or ruler < MIN_RULER_PX) and s < 1.0 - 1e-3:
        # Tiny cells in a large photograph: measure a central window at a finer scale
        # (full sharpness when the first pass saw nothing), still ANALYSIS_LONG_SIDE px.
        zoom = 1.0 if ruler is None else min(1.0, s * 2 * MIN_RULER_PX / max(ruler, 1.0))
        win = int(ANALYSIS_LONG_SIDE / zoom)
        y0, x0 = max(0, (h - win) // 2), max(0, (w - win) // 2)
        window = image[y0:y0 + win, x0:x0 + win]
        small2, s2 = _shrink(window, ANALYSIS_LONG_SIDE)
        ruler2, peaks2, _ = red_cell_diameter(small2)
        if ruler2 is not None and peaks2 >= MIN_RED_CELLS:
            ruler, peaks, s = ruler2, peaks2, s2
    if ruler is not None and peaks >= MIN_RED_CELLS:
        wbc = ruler * WBC_PER_RED_CELL / s
        return _capped(Scale(target / wbc, wbc, "red_cells", None, peaks, grey), h, w)
    reason = f"{peaks} red cells found (need {MIN_RED_CELLS})"
    if fg is not None:
        centre = _centre_object(_cell_foreground(small))
        if centre is not None:
            wbc = centre / s
            why = reason + "; a dominant object covers the centre: taken as the cell"
            return _capped(Scale(target / wbc, wbc, "single_cell", why, peaks, grey), h, w)
    if fg is None:
        return Scale(field_default_factor(h, w, long_side), None, "field_default",
                     "no stained object differs from the background (blank, black or noise "
                     "frame)", 0, grey, empty=True)
    return Scale(field_default_factor(h, w, long_side), None, "field_default",
                 fallback=reason + "; no dominant cell: sized as a BCCD field", red_cells=peaks,
                 grayscale=grey)


def _capped(scale: Scale, h: int, w: int) -> Scale:
    """The estimate, its factor bounded so the working image stays <= MAX_WORK_PIXELS."""
    top = math.sqrt(MAX_WORK_PIXELS / (h * w))
    if scale.factor > top:
        note = (f"factor {scale.factor:.2f} capped at {top:.2f} (working image <= "
                f"{MAX_WORK_PIXELS / 1e6:g} MP)")
        scale.fallback = f"{scale.fallback}; {note}" if scale.fallback else note
        scale.factor = top
    return scale


def field_default_factor(h: int, w: int, long_side: int) -> float:
    """The pre-scale-estimation rule: the long side becomes the working long side."""
    return long_side / max(h, w)
