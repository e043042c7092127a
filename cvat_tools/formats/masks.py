"""The one mask codec of the project: polygon <-> bitmap <-> CVAT RLE / COCO RLE / Nuclio mask.

Coordinate convention (CVAT's): pixel (row i, column j) covers the square [j, j+1) x [i, i+1);
polygon vertices are continuous coordinates in that frame. A polygon is rasterized by the
pixel-centre rule (pixel (i, j) is inside when (j + 0.5, i + 0.5) is; pycocotools does the
same with COCO polygons), and a bitmap is traced back to a polygon along its pixels' outer
edges, so rasterize(trace(mask)) gives the mask back (exactly before simplification, within
``tolerance`` px after it) and a polygon's area is its pixel count.

Wire formats, each pinned to its reference:

* CVAT for images 1.1 XML ``<mask rle="..." left= top= width= height=>``: run lengths over the
  crop, row-major, starting with a background run (0 when the crop starts with foreground).
* CVAT REST/SDK ``points`` of a ``mask`` shape: the same runs over the tight bounding box of the
  full-image bitmap, followed by ``[x1, y1, x2, y2]`` (inclusive). :func:`encode_cvat_mask` /
  :func:`decode_cvat_mask` agree exactly with ``cvat_sdk.masks.encode_mask/decode_mask``
  (tests/test_masks.py checks it on random bitmaps).
* Nuclio detector responses (``{"type": "mask", "mask": [...]}``): the flat row-major 0/1
  bitmap of the crop followed by ``[xtl, ytl, xbr, ybr]`` (inclusive). This is what CVAT's
  ``serverless/openvino/base/shared.py::to_cvat_mask`` builds
  (``mask[ytl:ybr + 1, xtl:xbr + 1].flat[:].tolist() + [xtl, ytl, xbr, ybr]``) and what
  ``cvat/apps/lambda_manager/views.py::_call_detector`` reads back: it takes
  ``points[-4:]`` as the box and run-length encodes ``points[:-4]`` with datumaro's
  ``mask_to_rle``.
* COCO RLE (``{"size": [h, w], "counts": ...}``): column-major runs starting with zeros,
  ``counts`` either a list (uncompressed) or pycocotools' compressed string (written here without
  pycocotools; it is only the tests' oracle).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import cv2
import numpy as np

from ..imaging import MAX_PIXELS
from .annotations import Mask

Point = tuple[float, float]

# No cell outline has this many vertices (a 4000 px perimeter traced at every pixel has
# 4000); above it shapely's validity repair can run for minutes, so such polygons are skipped.
MAX_POLYGON_VERTICES = 20_000
# Largest mask or annotated image a reader accepts: the pixel limit of imaging.py.
MAX_MASK_PIXELS = MAX_PIXELS


# ---------------------------------------------------------------------------------------------
# polygon <-> bitmap


# Rows x edges handled at once by the scanline fill (bounds memory on huge traced outlines).
_SCAN_CELLS = 2_000_000


def polygon_to_mask(points: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Full-image bool bitmap (height x width) of a polygon, by the pixel-centre rule.

    Pixel (i, j) is inside when its centre (j + 0.5, i + 0.5) is (even-odd rule; a centre on
    a left/top edge counts, on a right/bottom edge does not), which is what pycocotools does
    with COCO polygons, so a training loader sees the same mask. Fewer than 3 vertices (or a
    non-finite one) gives an empty mask; parts outside the image are cut.
    """
    height, width = int(height), int(width)
    full = np.zeros((max(height, 0), max(width, 0)), dtype=bool)
    crop = polygon_to_crop(points, height, width)
    if crop is not None:
        full[crop.top:crop.top + crop.height, crop.left:crop.left + crop.width] = crop.bitmap
    return full


def polygon_to_crop(points: Sequence[Sequence[float]], height: int, width: int) -> Mask | None:
    """:func:`polygon_to_mask` over the polygon's bounding box only (fast on large images).

    Returns the rasterized box as a :class:`Mask` (not necessarily tight; see
    :func:`mask_tight`), or None when the polygon covers no pixel centre of the image.
    """
    height, width = int(height), int(width)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    if len(pts) < 3 or not np.isfinite(pts).all() or height <= 0 or width <= 0:
        return None
    row_lo = max(0, math.ceil(float(pts[:, 1].min()) - 0.5))
    row_hi = min(height - 1, math.floor(float(pts[:, 1].max()) - 0.5))
    col_lo = max(0, math.ceil(float(pts[:, 0].min()) - 0.5))
    col_hi = min(width - 1, math.floor(float(pts[:, 0].max()) - 0.5))
    if row_hi < row_lo or col_hi < col_lo:
        return None
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    sloped = y0 != y1  # horizontal edges never cross a scanline
    x0, y0, x1, y1 = x0[sloped], y0[sloped], x1[sloped], y1[sloped]
    if x0.size == 0:
        return None
    box_w = col_hi - col_lo + 1
    bitmap = np.zeros((row_hi - row_lo + 1, box_w), dtype=bool)
    inv_slope = (x1 - x0) / (y1 - y0)
    step = max(1, _SCAN_CELLS // x0.size)
    for start in range(row_lo, row_hi + 1, step):
        rows = np.arange(start, min(start + step, row_hi + 1))
        yc = rows[:, None] + 0.5
        crosses = ((y0 <= yc) & (yc < y1)) | ((y1 <= yc) & (yc < y0))
        xs = np.where(crosses, x0 + (yc - y0) * inv_slope, np.inf)
        xs.sort(axis=1)
        n_cross = crosses.sum(axis=1)
        n_pairs = xs.shape[1] // 2
        if n_pairs == 0:
            continue
        enter, leave = xs[:, 0:2 * n_pairs:2], xs[:, 1:2 * n_pairs:2]
        valid = (np.arange(n_pairs)[None, :] * 2 + 1) < n_cross[:, None]
        # pixel j is inside a span [enter, leave) when enter <= j + 0.5 < leave
        first = np.clip(np.ceil(np.where(valid, enter, 0) - 0.5) - col_lo, 0, box_w).astype(np.int64)
        stop = np.clip(np.ceil(np.where(valid, leave, 0) - 0.5) - col_lo, 0, box_w).astype(np.int64)
        diff = np.zeros((rows.size, box_w + 1), dtype=np.int32)
        r_idx = np.broadcast_to(np.arange(rows.size)[:, None], first.shape)
        keep = valid & (stop > first)
        np.add.at(diff, (r_idx[keep], first[keep]), 1)
        np.add.at(diff, (r_idx[keep], stop[keep]), -1)
        bitmap[rows - row_lo] = np.cumsum(diff[:, :box_w], axis=1) > 0
    if not bitmap.any():
        return None
    return Mask(bitmap=bitmap, left=col_lo, top=row_lo)


def _component_area(contour: np.ndarray) -> int:
    """Pixels enclosed by a traced contour (holes included), counted on a small canvas."""
    x, y, w, h = cv2.boundingRect(contour)
    canvas = np.zeros((h, w), dtype=np.uint8)
    cv2.drawContours(canvas, [contour - np.array([x, y], dtype=contour.dtype)], -1, 1, thickness=-1)
    return int(canvas.sum())


def _grow_to_pixel_edges(inset: list[Point]) -> list[Point]:
    """Move an outline traced 1/4 px inside the pixel edges out onto them (area = pixel count).

    Falls back to the inset outline, which rasterizes to the same pixels, when the grown
    shape is not one clean polygon.
    """
    from shapely.geometry import Polygon as ShapelyPolygon
    from shapely.validation import make_valid

    if len(inset) > MAX_POLYGON_VERTICES:  # noisy giant masks: keep shapely out of it
        return inset
    try:
        grown = make_valid(ShapelyPolygon(inset)).buffer(0.25, join_style="mitre", mitre_limit=2.0)
    except Exception:
        return inset
    if grown.geom_type != "Polygon" or grown.is_empty or not grown.is_valid:
        return inset
    return [(float(x), float(y)) for x, y in grown.exterior.coords[:-1]]


def mask_to_polygons(
    bitmap: np.ndarray,
    left: int = 0,
    top: int = 0,
    tolerance: float = 1.0,
    min_area: int = 4,
) -> list[list[Point]]:
    """Outer contours of a bitmap as polygons in image coordinates, largest first.

    ``bitmap`` is placed with its top-left pixel at (left, top). Each polygon runs along the
    outer edges of the component's pixels (its area is the pixel count); it is simplified with
    Douglas-Peucker at ``tolerance`` px (0 keeps every step, and then
    ``polygon_to_mask(polygon)`` gives the component back exactly). Components enclosing fewer
    than ``min_area`` pixels are dropped; holes are ignored (a cell has none).
    """
    bitmap = np.asarray(bitmap).astype(bool)
    if bitmap.ndim != 2 or not bitmap.any():
        return []
    rows, cols = np.flatnonzero(bitmap.any(axis=1)), np.flatnonzero(bitmap.any(axis=0))
    top, left = top + int(rows[0]), left + int(cols[0])
    bitmap = bitmap[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # work on the tight crop
    # Traced at twice the resolution, the contour runs through the centres of the boundary
    # half-pixels, 1/4 px inside the pixel edges: one-pixel-wide parts keep a width and every
    # pixel centre stays strictly inside. One pixel of padding keeps edge contours whole.
    doubled = np.pad(np.repeat(np.repeat(bitmap, 2, axis=0), 2, axis=1), 1).astype(np.uint8)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    found: list[tuple[int, list[Point]]] = []
    for contour in contours:
        area = (_component_area(contour) + 3) // 4
        if area < min_area:
            continue
        simple = cv2.approxPolyDP(contour, 2 * tolerance, True) if tolerance > 0 else contour
        if len(simple) < 3:
            simple = contour
        # half-pixel index k (after the padding) has its centre at (k - 1 + 0.5) / 2.
        pts = (simple.reshape(-1, 2).astype(np.float64) - 0.5) / 2.0
        inset = [(float(x) + left, float(y) + top) for x, y in pts]
        if len(inset) >= 3:
            found.append((area, _grow_to_pixel_edges(inset)))
    found.sort(key=lambda item: -item[0])
    return [poly for _, poly in found]


def mask_to_polygon(
    bitmap: np.ndarray,
    left: int = 0,
    top: int = 0,
    tolerance: float = 1.0,
    min_area: int = 4,
) -> list[Point] | None:
    """The largest outer contour of :func:`mask_to_polygons`, or None for an empty mask."""
    polygons = mask_to_polygons(bitmap, left, top, tolerance, min_area)
    return polygons[0] if polygons else None


POLYGON_TOLERANCE = 1.0  # px; CVAT's own mask functions use 2.5, a cell outline wants detail


def polygon_points(mask: Mask, width: int | None = None, height: int | None = None) -> list[float]:
    """Flat polygon of a mask (>= 3 vertices); its box corners if the outline is degenerate.

    With the image size, vertices are clamped to [0, width] x [0, height]: outlines traced
    on pixel edges overshoot the last pixel by ~0.12 px, and CVAT does not clamp on save.
    """
    polygon = mask_to_polygon(mask.bitmap, mask.left, mask.top, tolerance=POLYGON_TOLERANCE,
                              min_area=1)
    if polygon is None or len(polygon) < 3:
        x0, y0 = float(mask.left), float(mask.top)
        x1, y1 = x0 + mask.width, y0 + mask.height
        polygon = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if width is not None and height is not None:
        polygon = [(min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height)))
                   for x, y in polygon]
    return [round(v, 2) for point in polygon for v in point]


def polygon_area(points: Sequence[Sequence[float]]) -> float:
    """Shoelace area (absolute) of a simple polygon in px^2."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def polygon_bbox(points: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the vertices."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def repair_polygon(points: Sequence[Sequence[float]], width: int, height: int) -> list[list[Point]]:
    """Valid pieces of a polygon inside the image: [] when nothing with area remains.

    A valid polygon inside the image comes back unchanged (same vertices, same order), so
    clean annotations round-trip exactly. Otherwise shapely's ``make_valid`` splits
    self-intersections (a bowtie becomes two triangles), the result is clipped to the image
    and pieces without area are dropped. Holes are dropped: cells have none, and no format
    here stores them. Never raises on degenerate input.
    """
    from shapely.geometry import Polygon as ShapelyPolygon
    from shapely.geometry import box
    from shapely.validation import make_valid

    if len(points) > MAX_POLYGON_VERTICES:
        return []
    try:
        pts = [(float(x), float(y)) for x, y in points]
    except (TypeError, ValueError):
        return []
    if len(pts) < 3 or not all(math.isfinite(v) for p in pts for v in p):
        return []
    try:
        poly = ShapelyPolygon(pts)
        frame = box(0, 0, width, height)
        if poly.is_valid and poly.area > 0 and frame.covers(poly):
            return [pts]
        fixed = make_valid(poly).intersection(frame)
    except Exception:  # shapely/GEOS refuses some pathological inputs; report, don't crash
        return []
    pieces = []
    for geom in getattr(fixed, "geoms", [fixed]):
        for part in getattr(geom, "geoms", [geom]):
            if part.geom_type == "Polygon" and part.area > 1e-9:
                ring = list(part.exterior.coords)[:-1]
                if len(ring) >= 3:
                    pieces.append((part.area, [(float(x), float(y)) for x, y in ring]))
    pieces.sort(key=lambda item: -item[0])
    return [ring for _, ring in pieces]


# ---------------------------------------------------------------------------------------------
# Mask (crop + origin) helpers


def mask_from_bitmap(full_bitmap: np.ndarray) -> Mask | None:
    """Tight crop of a full-image bitmap as a :class:`Mask`, or None when it is empty."""
    full_bitmap = np.asarray(full_bitmap).astype(bool)
    if full_bitmap.ndim != 2:
        raise ValueError("bitmap must have 2 dimensions")
    rows = np.flatnonzero(full_bitmap.any(axis=1))
    if rows.size == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(full_bitmap[y0:y1].any(axis=0))
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    return Mask(bitmap=full_bitmap[y0:y1, x0:x1].copy(), left=x0, top=y0)


def mask_to_full(mask: Mask, width: int, height: int) -> np.ndarray:
    """Full-image bool bitmap of a :class:`Mask`; parts outside the image are cut."""
    full = np.zeros((int(height), int(width)), dtype=bool)
    bm = np.asarray(mask.bitmap).astype(bool)
    y0, x0 = max(mask.top, 0), max(mask.left, 0)
    y1, x1 = min(mask.top + bm.shape[0], height), min(mask.left + bm.shape[1], width)
    if y1 > y0 and x1 > x0:
        full[y0:y1, x0:x1] = bm[y0 - mask.top:y1 - mask.top, x0 - mask.left:x1 - mask.left]
    return full


def mask_tight(mask: Mask) -> Mask | None:
    """The same mask cropped to its foreground's bounding box, or None when empty."""
    inner = mask_from_bitmap(mask.bitmap)
    if inner is None:
        return None
    return Mask(bitmap=inner.bitmap, left=mask.left + inner.left, top=mask.top + inner.top)


# ---------------------------------------------------------------------------------------------
# CVAT run lengths


def _runs(flat: np.ndarray) -> list[int]:
    """Alternating run lengths of a flat bool array, background run first (maybe 0)."""
    flat = np.asarray(flat, dtype=bool).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def _unruns(rle: Sequence[int], size: int) -> np.ndarray:
    """Flat bool array of runs that must cover exactly ``size`` pixels (ValueError otherwise).

    Checked before anything is allocated: no run may exceed ``size`` (so no int64 overflow)
    and there can be at most ``size + 1`` runs, so the work is bounded by the mask's own size.
    """
    if isinstance(rle, np.ndarray) and rle.dtype.kind in "iu":
        counts = rle.astype(np.int64, copy=False).ravel()
    else:
        if len(rle) > min(size + 1, MAX_RLE_RUNS):
            raise ValueError(f"mask RLE has {len(rle)} runs, over the limit for a {size}-pixel mask")
        values = [int(v) for v in rle]
        if any(v < 0 or v > size for v in values):
            raise ValueError("mask RLE has a run length below 0 or over the mask size")
        counts = np.asarray(values, dtype=np.int64)
    if counts.size > min(size + 1, MAX_RLE_RUNS):
        raise ValueError(f"mask RLE has {counts.size} runs, over the limit for a {size}-pixel mask")
    if counts.size and (counts.min() < 0 or counts.max() > size):
        raise ValueError("mask RLE has a run length below 0 or over the mask size")
    total = int(counts.sum())
    if total != size:
        raise ValueError(f"mask RLE covers {total} pixels, the mask has {size}")
    values = (np.arange(counts.size) & 1) != 0
    return np.repeat(values, counts)


# Runs one mask may have. A cell's mask has about two per row; even a noisy brush mask of a
# whole 12 MP photograph stays far below. Bounds the decoder's memory (8 bytes a run).
MAX_RLE_RUNS = 1_000_000
_RUNS_TEXT = re.compile(r"\d{1,15}(?:\s*,\s*\d{1,15})*", re.ASCII)


def parse_runs(text: str, size: int) -> np.ndarray:
    """Run lengths from CVAT XML's ``rle="3, 5, 2"`` text, bounded by the mask ``size``.

    ValueError (never OverflowError, never a huge list) for anything that is not a plain
    comma-separated list of at most ``min(size + 1, MAX_RLE_RUNS)`` whole numbers.
    """
    text = (text or "").strip().rstrip(",").strip()
    if not text:
        return np.zeros(0, dtype=np.int64)
    n = text.count(",") + 1
    if n > min(size + 1, MAX_RLE_RUNS):
        raise ValueError(f"mask RLE has {n} runs, over the limit for a {size}-pixel mask")
    if not _RUNS_TEXT.fullmatch(text):
        raise ValueError("rle must be comma-separated whole numbers below 10^15")
    return np.fromstring(text, dtype=np.int64, sep=",")


def cvat_rle_encode(bitmap: np.ndarray) -> list[int]:
    """Runs of a crop bitmap, row-major, background first: CVAT XML ``<mask rle=...>``."""
    return _runs(np.asarray(bitmap, dtype=bool).ravel(order="C"))


def cvat_rle_decode(rle: Sequence[int], width: int, height: int) -> np.ndarray:
    """Bool bitmap (height x width) of a CVAT XML mask RLE; ValueError if it does not fit."""
    return _unruns(rle, int(width) * int(height)).reshape(int(height), int(width))


def encode_cvat_mask(bitmap_full_image: np.ndarray) -> list[float]:
    """CVAT ``points`` of a mask shape: runs over the tight box + [x1, y1, x2, y2] inclusive.

    Identical to ``cvat_sdk.masks.encode_mask(bitmap)`` (an empty mask encodes the 1x1 box at
    the origin, as there).
    """
    bitmap = np.asarray(bitmap_full_image)
    if bitmap.ndim != 2:
        raise ValueError("bitmap must have 2 dimensions")
    mask = mask_from_bitmap(bitmap)
    if mask is None:
        mask = Mask(bitmap=np.zeros((1, 1), dtype=bool), left=0, top=0)
    return _encode_crop(mask)


def _encode_crop(mask: Mask) -> list[float]:
    return cvat_rle_encode(mask.bitmap) + [
        mask.left,
        mask.top,
        mask.left + mask.width - 1,
        mask.top + mask.height - 1,
    ]


def encode_mask_crop(mask: Mask, image_width: int, image_height: int) -> list[float]:
    """CVAT ``points`` of a :class:`Mask`, as ``encode_cvat_mask(mask_to_full(mask, ...))``."""
    inside = mask_from_bitmap(mask_to_full(mask, image_width, image_height)) if (
        mask.left < 0 or mask.top < 0
        or mask.left + mask.width > image_width or mask.top + mask.height > image_height
    ) else mask_tight(mask)
    if inside is None:
        return encode_cvat_mask(np.zeros((1, 1), dtype=bool))
    return _encode_crop(inside)


def decode_cvat_mask(points: Sequence[float], width: int, height: int) -> np.ndarray:
    """Full-image bool bitmap of CVAT mask ``points``; same checks as ``cvat_sdk.masks.decode_mask``."""
    if len(points) < 5:
        raise ValueError("too few elements in encoded mask")
    if width <= 0 or height <= 0:
        raise ValueError("invalid image dimensions")
    ints = []
    for v in points:
        if isinstance(v, float):
            if not v.is_integer():
                raise ValueError(f"non-integer value in encoded mask: {v!r}")
            v = int(v)
        ints.append(int(v))
    *rle, x1, y1, x2, y2 = ints
    x2 += 1
    y2 += 1
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError("invalid encoded bounding box")
    crop = _unruns(rle, (x2 - x1) * (y2 - y1)).reshape(y2 - y1, x2 - x1)
    full = np.zeros((int(height), int(width)), dtype=bool)
    full[y1:y2, x1:x2] = crop
    return full


def serverless_mask(mask: Mask) -> list[int]:
    """Nuclio detector ``"mask"``: flat row-major 0/1 crop + [xtl, ytl, xbr, ybr] inclusive.

    The crop is used as given (call :func:`mask_tight` first for the tightest box). See the
    module docstring for the CVAT sources this format is taken from.
    """
    flat = np.asarray(mask.bitmap, dtype=bool).astype(np.uint8).ravel(order="C").tolist()
    return flat + [mask.left, mask.top, mask.left + mask.width - 1, mask.top + mask.height - 1]


def serverless_mask_decode(values: Sequence[int]) -> Mask:
    """Inverse of :func:`serverless_mask` (for tests and for reading function responses)."""
    *flat, xtl, ytl, xbr, ybr = [int(v) for v in values]
    w, h = xbr - xtl + 1, ybr - ytl + 1
    if w <= 0 or h <= 0 or len(flat) != w * h:
        raise ValueError("serverless mask: bitmap length does not match its box")
    return Mask(bitmap=np.asarray(flat, dtype=bool).reshape(h, w), left=xtl, top=ytl)


# ---------------------------------------------------------------------------------------------
# COCO RLE (pycocotools' format, without pycocotools)


def _coco_counts_to_string(counts: Iterable[int]) -> str:
    """pycocotools ``rleToString``: LEB128-like 6-bit chars, counts delta-coded after the 2nd."""
    cnts = list(counts)
    out = []
    for i, value in enumerate(cnts):
        x = int(value) - (int(cnts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C on a signed long
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


# A count needs at most 7 chars of 5 bits (2^35 pixels, far above any image); pycocotools'
# C code stops at 64 bits. Longer runs of continuation chars are what made the old decoder
# build huge Python ints (quadratic time, then OverflowError).
_MAX_COUNT_CHARS = 12


def _coco_string_to_counts(s: str | bytes, size: int | None = None) -> np.ndarray:
    """pycocotools ``rleFrString``, vectorised (linear time), as an int64 array.

    With ``size`` the string may not hold more counts than ``size + 1`` (the decoder never
    works past what the mask can hold); a value longer than 12 chars is a ValueError.
    """
    if isinstance(s, str):
        try:
            s = s.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("COCO RLE string is not ASCII") from None
    if len(s) > 4 * MAX_RLE_RUNS:
        raise ValueError(f"COCO RLE string of {len(s)} chars is over the {4 * MAX_RLE_RUNS} limit")
    chars = np.frombuffer(bytes(s), dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (chars < 0).any() or (chars > 63).any():
        raise ValueError("COCO RLE string has characters outside '0'..'o'")
    last = (chars & 0x20) == 0  # the last char of each value has no continuation bit
    if not last[-1]:
        raise ValueError("truncated COCO RLE string")
    ends = np.flatnonzero(last)
    if ends.size > MAX_RLE_RUNS or (size is not None and ends.size > size + 1):
        raise ValueError(f"COCO RLE has {ends.size} counts, over the limit for its size")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_COUNT_CHARS:
        raise ValueError("COCO RLE count is implausibly long (over 12 chars)")
    value_of = np.repeat(np.arange(ends.size), lengths)
    k = np.arange(chars.size) - starts[value_of]
    x = np.zeros(ends.size, dtype=np.int64)
    np.add.at(x, value_of, (chars & 0x1F) << (5 * k))
    negative = (chars[ends] & 0x10) != 0  # sign-extend from the last char's top bit
    x[negative] -= np.left_shift(np.int64(1), 5 * lengths[negative])
    # counts[i] = x[i] + counts[i - 2] for i > 2: running sums over odd and even indices
    counts = x.copy()
    counts[3::2] = np.cumsum(x[1::2])[1:]
    counts[4::2] = np.cumsum(x[2::2])[1:]
    return counts


def coco_rle_encode(bitmap_full: np.ndarray) -> dict:
    """Compressed COCO RLE of a full-image bitmap: ``{"size": [h, w], "counts": str}``."""
    bitmap = np.asarray(bitmap_full, dtype=bool)
    h, w = bitmap.shape
    runs = _runs(bitmap.ravel(order="F"))
    if not runs:
        runs = [0]
    return {"size": [int(h), int(w)], "counts": _coco_counts_to_string(runs)}


def _coco_size_and_counts(rle: dict) -> tuple[int, int, object]:
    """(h, w, counts) of a COCO RLE, its size bounded and a compressed string decoded."""
    h, w = (int(v) for v in rle["size"])
    if h <= 0 or w <= 0 or h * w > MAX_MASK_PIXELS:
        raise ValueError(f"COCO RLE size {[h, w]} is not positive or over {MAX_MASK_PIXELS // 10**6} MP")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _coco_string_to_counts(counts, h * w)
    return h, w, counts


def coco_rle_decode(rle: dict) -> np.ndarray:
    """Bool bitmap (h x w) of a COCO RLE, compressed (str/bytes) or uncompressed (list)."""
    h, w, counts = _coco_size_and_counts(rle)
    if not isinstance(counts, (list, np.ndarray)):
        raise ValueError("COCO RLE counts must be a string or a list")
    flat = _unruns(counts, h * w)
    return flat.reshape(w, h).T.copy()


class MaskBudgetError(ValueError):
    """Decoding would take more pixels than the caller allowed."""


def coco_rle_to_mask(rle: dict, max_pixels: int | None = None) -> Mask | None:
    """Tight :class:`Mask` of a COCO RLE (None when empty), decoding only the columns that
    hold foreground: work and memory follow the cell's size, not the image's.

    ``max_pixels``: :class:`MaskBudgetError` (before decoding) when the columns to decode
    hold more pixels than that.
    """
    h, w, counts = _coco_size_and_counts(rle)
    if isinstance(counts, list):
        if len(counts) > min(h * w + 1, MAX_RLE_RUNS):
            raise ValueError(f"COCO RLE has {len(counts)} counts, over the limit for its size")
        if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= h * w for v in counts):
            raise ValueError("COCO RLE counts must be whole numbers between 0 and the mask size")
        counts = np.asarray(counts, dtype=np.int64)
    elif not isinstance(counts, np.ndarray):
        raise ValueError("COCO RLE counts must be a string or a list")
    if counts.size and (counts.min() < 0 or counts.max() > h * w):
        raise ValueError("COCO RLE has a count below 0 or over the mask size")
    ends = np.cumsum(counts)
    if counts.size == 0 or int(ends[-1]) != h * w:
        raise ValueError(f"COCO RLE covers {int(ends[-1]) if counts.size else 0} pixels, the mask has {h * w}")
    fg = np.flatnonzero((np.arange(counts.size) & 1).astype(bool) & (counts > 0))
    if fg.size == 0:
        return None
    first, last = int(fg[0]), int(fg[-1])
    start = int(ends[first] - counts[first])
    col0, col1 = start // h, (int(ends[last]) - 1) // h
    if max_pixels is not None and (col1 - col0 + 1) * h > max_pixels:
        raise MaskBudgetError(f"decoding needs {(col1 - col0 + 1) * h} pixels, over the {max_pixels} left")
    by_column = np.zeros((col1 - col0 + 1) * h, dtype=bool)
    fg_starts = (ends[fg] - counts[fg]) - col0 * h
    fg_ends = ends[fg] - col0 * h
    if fg.size <= 256:  # few long runs: slice fills beat np.repeat ~20x
        for a, b in zip(fg_starts.tolist(), fg_ends.tolist()):
            by_column[a:b] = True
    else:
        local = np.concatenate(([start - col0 * h], counts[first:last + 1],
                                [(col1 + 1) * h - int(ends[last])]))
        by_column = np.repeat((np.arange(local.size) & 1).astype(bool), local)
    by_column = by_column.reshape(col1 - col0 + 1, h)  # its first and last column hold foreground
    rows = np.flatnonzero(by_column.any(axis=0))
    # cv2's blocked transpose: numpy's strided one takes ~0.5 s on a 64 MP mask
    crop = cv2.transpose(np.ascontiguousarray(by_column[:, rows[0]:rows[-1] + 1]).view(np.uint8))
    return Mask(bitmap=crop.view(bool), left=col0, top=int(rows[0]))


def coco_rle_area(rle: dict) -> int:
    """Foreground pixels of a COCO RLE without decoding it."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        h, w = (int(v) for v in rle["size"])
        counts = _coco_string_to_counts(counts, h * w)
    return int(sum(int(v) for v in counts[1::2]))
