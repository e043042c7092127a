"""The mask codec against its references: cvat_sdk.masks, pycocotools, CVAT's serverless code."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import cvat_sdk.masks as sdk_masks
import pycocotools.mask as coco_mask

from cvat_tools.formats.annotations import Mask
from cvat_tools.formats.masks import (
    coco_rle_area,
    coco_rle_decode,
    coco_rle_encode,
    cvat_rle_decode,
    cvat_rle_encode,
    decode_cvat_mask,
    encode_cvat_mask,
    encode_mask_crop,
    mask_from_bitmap,
    mask_tight,
    mask_to_full,
    mask_to_polygon,
    mask_to_polygons,
    polygon_area,
    polygon_to_crop,
    polygon_to_mask,
    repair_polygon,
    serverless_mask,
    serverless_mask_decode,
)

bitmaps = st.integers(1, 24).flatmap(
    lambda h: st.integers(1, 24).flatmap(lambda w: arrays(np.bool_, (h, w)))
)


def _blobs(seed: int, h: int, w: int) -> np.ndarray:
    """Smooth random blobs (cell-like, some touching the border, some one pixel wide)."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((h, w)), (0, 0), rng.uniform(0.3, 3.0))
    return noise > 0.5


def _fill_holes(bitmap: np.ndarray) -> np.ndarray:
    import cv2

    padded = np.pad(bitmap, 1).astype(np.uint8)
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(padded)
    cv2.drawContours(out, contours, -1, 1, thickness=-1)
    return out[1:-1, 1:-1].astype(bool)


# --- CVAT SDK points ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(bitmaps)
def test_encode_cvat_mask_equals_cvat_sdk(bitmap):
    ours = encode_cvat_mask(bitmap)
    assert ours == sdk_masks.encode_mask(bitmap)
    h, w = bitmap.shape
    np.testing.assert_array_equal(
        decode_cvat_mask(ours, w, h), sdk_masks.decode_mask(ours, image_width=w, image_height=h)
    )
    np.testing.assert_array_equal(decode_cvat_mask(ours, w, h), bitmap)


@settings(max_examples=200, deadline=None)
@given(bitmaps)
def test_encode_mask_crop_equals_full_image_encoding(bitmap):
    h, w = bitmap.shape
    mask = mask_from_bitmap(bitmap)
    if mask is None:
        assert not bitmap.any()
        return
    assert encode_mask_crop(mask, w, h) == sdk_masks.encode_mask(bitmap)
    # a loose crop (extra empty border) encodes the same: the box is always tight
    loose = Mask(np.pad(mask.bitmap, 2), left=mask.left - 2, top=mask.top - 2)
    assert encode_mask_crop(loose, w, h) == sdk_masks.encode_mask(bitmap)
    np.testing.assert_array_equal(mask_to_full(mask, w, h), bitmap)


def test_decode_cvat_mask_refuses_what_cvat_sdk_refuses():
    with pytest.raises(ValueError):
        decode_cvat_mask([1, 0, 0, 0], 4, 4)  # too short
    with pytest.raises(ValueError):
        decode_cvat_mask([3, 0, 0, 1, 1], 4, 4)  # 3 runs for a 2x2 box
    with pytest.raises(ValueError):
        decode_cvat_mask([4, 0, 0, 4, 0], 4, 4)  # box outside the image
    with pytest.raises(ValueError):
        decode_cvat_mask([1.5, 0, 0, 0, 0], 4, 4)


# --- CVAT XML rle --------------------------------------------------------------------------------


def test_cvat_rle_is_row_major_background_first():
    assert cvat_rle_encode(np.array([[0, 1], [1, 1]], bool)) == [1, 3]
    assert cvat_rle_encode(np.array([[1, 0], [0, 1]], bool)) == [0, 1, 2, 1]
    assert cvat_rle_encode(np.zeros((2, 3), bool)) == [6]
    np.testing.assert_array_equal(
        cvat_rle_decode([0, 1, 2, 1], width=2, height=2), np.array([[1, 0], [0, 1]], bool)
    )
    with pytest.raises(ValueError):
        cvat_rle_decode([1, 2], width=2, height=2)


@settings(max_examples=200, deadline=None)
@given(bitmaps)
def test_cvat_rle_round_trip(bitmap):
    h, w = bitmap.shape
    np.testing.assert_array_equal(cvat_rle_decode(cvat_rle_encode(bitmap), w, h), bitmap)


# --- Nuclio detector response --------------------------------------------------------------------


def _cvat_to_cvat_mask(box, mask):
    """CVAT's serverless/openvino/base/shared.py::to_cvat_mask, the reference."""
    xtl, ytl, xbr, ybr = box
    flattened = mask[ytl:ybr + 1, xtl:xbr + 1].flat[:].tolist()
    flattened.extend([xtl, ytl, xbr, ybr])
    return flattened


@settings(max_examples=100, deadline=None)
@given(bitmaps)
def test_serverless_mask_matches_cvat_serverless_helper(bitmap):
    mask = mask_from_bitmap(bitmap)
    if mask is None:
        return
    h, w = bitmap.shape
    box = [mask.left, mask.top, mask.left + mask.width - 1, mask.top + mask.height - 1]
    assert serverless_mask(mask) == _cvat_to_cvat_mask(box, bitmap.astype(np.uint8))
    assert serverless_mask_decode(serverless_mask(mask)) == mask


# --- COCO RLE ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(bitmaps)
def test_coco_rle_equals_pycocotools(bitmap):
    ours = coco_rle_encode(bitmap)
    theirs = coco_mask.encode(np.asfortranarray(bitmap.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"].decode("ascii")
    assert ours["size"] == list(theirs["size"])
    np.testing.assert_array_equal(coco_rle_decode(ours), bitmap)
    np.testing.assert_array_equal(coco_rle_decode(theirs), bitmap)  # bytes counts
    assert coco_rle_area(ours) == int(bitmap.sum())


def test_coco_rle_decode_accepts_uncompressed_counts():
    bitmap = _blobs(3, 30, 40)
    h, w = bitmap.shape
    flat = bitmap.ravel(order="F")
    runs, value, n = [], False, 0
    for v in flat:
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    runs.append(n)
    rle = {"size": [h, w], "counts": runs}
    np.testing.assert_array_equal(coco_rle_decode(rle), bitmap)
    compressed = coco_mask.frPyObjects(rle, h, w)
    np.testing.assert_array_equal(coco_rle_decode(compressed), bitmap)


# --- polygons ------------------------------------------------------------------------------------


def test_polygon_to_mask_uses_pixel_centres_like_pycocotools():
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    ours = polygon_to_mask(square, 12, 12)
    assert ours.sum() == 100 and ours[:10, :10].all()
    theirs = coco_mask.decode(coco_mask.frPyObjects([[0, 0, 10, 0, 10, 10, 0, 10]], 12, 12))[:, :, 0]
    np.testing.assert_array_equal(ours, theirs.astype(bool))
    # fractional edges: pixel j is in when its centre j + 0.5 is
    rect = polygon_to_mask([(2.4, 1.6), (7.6, 1.6), (7.6, 4.4), (2.4, 4.4)], 8, 10)
    assert np.argwhere(rect.any(axis=0)).ravel().tolist() == [2, 3, 4, 5, 6, 7]
    assert np.argwhere(rect.any(axis=1)).ravel().tolist() == [2, 3]


def test_polygon_to_mask_matches_exact_point_in_polygon():
    from matplotlib.path import Path

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:30, 0:40]
    centres = np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5]
    for _ in range(100):
        pts = rng.uniform(-5, 45, size=(rng.integers(3, 12), 2))
        expected = Path(pts).contains_points(centres).reshape(30, 40)
        np.testing.assert_array_equal(polygon_to_mask(pts, 30, 40), expected)
        crop = polygon_to_crop(pts, 30, 40)  # the same pixels, computed over the box only
        if crop is None:
            assert not expected.any()
        else:
            np.testing.assert_array_equal(mask_to_full(crop, 40, 30), expected)


def test_polygon_to_mask_degenerate_inputs_give_empty_masks():
    assert not polygon_to_mask([], 5, 5).any()
    assert not polygon_to_mask([(1, 1), (3, 3)], 5, 5).any()
    assert not polygon_to_mask([(1, 1), (3, float("nan")), (1, 3)], 5, 5).any()
    assert not polygon_to_mask([(10, 10), (20, 10), (20, 20)], 5, 5).any()  # outside


@pytest.mark.parametrize("seed", range(40))
def test_mask_to_polygons_round_trip_is_exact_without_simplification(seed):
    bitmap = _blobs(seed, 20 + seed, 31)
    polygons = mask_to_polygons(bitmap, tolerance=0, min_area=1)
    back = np.zeros_like(bitmap)
    for polygon in polygons:
        back |= polygon_to_mask(polygon, *bitmap.shape)
    np.testing.assert_array_equal(back, _fill_holes(bitmap))


def test_mask_to_polygon_of_a_cell_is_close_and_its_area_is_the_pixel_count():
    import cv2

    bitmap = np.zeros((300, 400), np.uint8)
    cv2.ellipse(bitmap, (200, 150), (80, 60), 30, 0, 360, 1, -1)
    bitmap = bitmap.astype(bool)
    polygon = mask_to_polygon(bitmap)  # simplified at 1 px
    assert 8 <= len(polygon) <= 80
    back = polygon_to_mask(polygon, 300, 400)
    assert (back & bitmap).sum() / (back | bitmap).sum() > 0.98
    assert abs(polygon_area(polygon) - bitmap.sum()) / bitmap.sum() < 0.01
    exact = mask_to_polygon(bitmap, tolerance=0)
    np.testing.assert_array_equal(polygon_to_mask(exact, 300, 400), bitmap)


def test_mask_to_polygons_places_crops_and_drops_specks():
    crop = np.zeros((10, 10), bool)
    crop[2:6, 3:8] = True  # 20 px
    crop[8, 8] = True  # a 1 px speck
    polygons = mask_to_polygons(crop, left=100, top=50, tolerance=0)
    assert len(polygons) == 1
    xs, ys = zip(*polygons[0])
    assert (min(xs), min(ys), max(xs), max(ys)) == (103, 52, 108, 56)
    assert len(mask_to_polygons(crop, min_area=1)) == 2
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []
    assert mask_to_polygon(np.zeros((4, 4), bool)) is None


def test_repair_polygon():
    square = [(1.0, 1.0), (5.0, 1.0), (5.0, 5.0), (1.0, 5.0)]
    assert repair_polygon(square, 10, 10) == [square]  # valid: untouched
    bowtie = [(0, 0), (10, 10), (10, 0), (0, 10)]
    pieces = repair_polygon(bowtie, 20, 20)
    assert len(pieces) == 2 and all(abs(polygon_area(p) - 25) < 1e-9 for p in pieces)
    clipped = repair_polygon([(-5, -5), (5, -5), (5, 5), (-5, 5)], 20, 20)
    assert len(clipped) == 1 and abs(polygon_area(clipped[0]) - 25) < 1e-9
    assert repair_polygon([(0, 0), (1, 1)], 10, 10) == []
    assert repair_polygon([(0, 0), (1, 1), (2, 2)], 10, 10) == []  # no area
    assert repair_polygon([(30, 30), (40, 30), (40, 40)], 10, 10) == []  # outside
    assert repair_polygon([(0, 0), (float("nan"), 1), (2, 2)], 10, 10) == []
    assert repair_polygon([("a", 0), (1, 1), (2, 2)], 10, 10) == []


def test_mask_helpers():
    bitmap = np.zeros((6, 7), bool)
    bitmap[2:4, 1:5] = True
    mask = mask_from_bitmap(bitmap)
    assert (mask.left, mask.top, mask.width, mask.height) == (1, 2, 4, 2)
    assert mask_from_bitmap(np.zeros((3, 3), bool)) is None
    loose = Mask(np.pad(mask.bitmap, 1), left=0, top=1)
    assert mask_tight(loose) == mask
    # a crop hanging over the image edge is cut
    over = Mask(np.ones((4, 4), bool), left=5, top=-1)
    full = mask_to_full(over, 7, 6)
    assert full.sum() == 6 and full[0:3, 5:7].all()
