"""Resample + tiles + merge + paste (segment/tiling.py) with an exact stand-in detector, and
the shipped segmenter through the same path on zoomed and wide real fields."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from cvat_tools.segment.tiling import plan_tiles, segment_resampled

BG, INK = 220.0, 60.0


def disc_detector(calls=None):
    """A detector that finds dark discs exactly: probability = darkness, one detection per
    connected dark blob (cut where it leaves the tile, as a real model's would be)."""
    def detect(tile):
        if calls is not None:
            calls.append(tile.shape)
        prob = np.clip((BG - tile.mean(2).astype(np.float32)) / (BG - INK), 0, 1)
        n, lab, stats, _ = cv2.connectedComponentsWithStats((prob >= 0.5).astype(np.uint8))
        boxes, scores, probs = [], [], []
        for i in range(1, n):
            x, y, w, h, _ = stats[i]
            near = cv2.dilate((lab == i).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            boxes.append([x, y, x + w, y + h])
            scores.append(0.9)
            probs.append(np.where(near, prob, 0).astype(np.float32))
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0,) + tile.shape[:2], np.float32)
        return np.array(boxes, float), np.array(scores), np.stack(probs)
    return detect


def discs_image(h, w, centres, radius):
    """Anti-aliased dark discs (2x supersampled) and their pixel masks: the pixels darker
    than half-way, i.e. what the detector finds on the image itself."""
    big = np.full((h * 2, w * 2), BG, np.float32)
    for cx, cy in centres:
        # cv2 draws in pixel-centre coordinates: continuous x (pixel edges) is x - 0.5 there.
        centre = (int(round((cx * 2 - 0.5) * 16)), int(round((cy * 2 - 0.5) * 16)))
        cv2.circle(big, centre, int(radius * 2 * 16), INK, -1, cv2.LINE_AA, shift=4)
    image = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).round().astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    dark = image <= (BG + INK) / 2
    truths = [dark & (((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) <= (radius + 2) ** 2)
              for cx, cy in centres]
    return np.repeat(image[..., None], 3, axis=2), truths


def scattered(rng, n, radius, h, w):
    """``n`` disc centres inside an h x w field, 12 px or more apart."""
    centres = []
    while len(centres) < n:
        c = (rng.uniform(radius + 2, w - radius - 2), rng.uniform(radius + 2, h - radius - 2))
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 > (2 * radius + 12) ** 2 for a, b in centres):
            centres.append(c)
    return centres


def _iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


def test_plan_tiles_cover_overlap_and_partition():
    tiles = plan_tiles(2000, 1500, tile=768, overlap=160)
    owner = np.zeros((1500, 2000), np.int32)
    for t in tiles:
        assert t.x1 - t.x0 == 768 and t.y1 - t.y0 == 768
        owner[int(np.ceil(t.cy0)):int(np.ceil(t.cy1)), int(np.ceil(t.cx0)):int(np.ceil(t.cx1))] += 1
        assert t.x0 <= t.cx0 and t.cx1 <= t.x1 and t.y0 <= t.cy0 and t.cy1 <= t.y1
    assert (owner == 1).all()  # every pixel owned by exactly one tile's core
    xs = sorted({t.x0 for t in tiles})
    assert all(b - a <= 768 - 160 for a, b in zip(xs, xs[1:]))  # overlap >= 160
    assert len(plan_tiles(300, 200, 768, 160)) == 1


@pytest.mark.parametrize("radius,factor", [(75, 0.7), (150, 0.36), (24, 2.2), (52, 1.0)])
def test_registration_through_resample_tiles_and_paste(radius, factor):
    # Cells scattered over a wide field, several across tile borders, resampled to ~105 px
    # (the canonical size; overlap 160 = 1.5 of it): each comes back once, whole, on the
    # same pixels.
    h, w = (1500, 2000) if radius > 30 else (400, 600)
    centres = scattered(np.random.default_rng(3), 14, radius, h, w)
    image, truths = discs_image(h, w, centres, radius)
    calls = []
    dets = segment_resampled(disc_detector(calls), image, factor, threshold=0.5, overlap=160,
                             tile=512)
    assert len(calls) > 1, "the field was tiled"
    assert len(dets) == len(truths), "no cell cut in two, no duplicates"
    for truth in truths:
        best = max(_iou(d.full_mask(h, w), truth) for d in dets)
        # A 48-px cell has ~150 boundary pixels: 2 of them flipped by uint8 rounding of the
        # resampled image already cost 0.01 IoU, so small cells get 0.98.
        assert best >= (0.99 if radius >= 50 else 0.98), (factor, best)
    for d in dets:  # stored cropped to the cell, never a full-size array per cell
        assert d.mask.width <= 2 * radius + 4 and d.mask.height <= 2 * radius + 4


def test_one_huge_cell_and_a_small_single_cell_image():
    # 700-px cell in a 12 MP photograph: one small working image, one instance.
    image, truths = discs_image(3024, 4032, [(2000.3, 1500.7)], 350)
    dets = segment_resampled(disc_detector(), image, 104.5 / 700, threshold=0.5)
    assert len(dets) == 1 and _iou(dets[0].full_mask(3024, 4032), truths[0]) >= 0.99
    # A 120x120 crop enlarged 1.4x is mirror-padded to a field: the mirrored copies of the
    # cell are not reported.
    image, truths = discs_image(120, 120, [(60.2, 59.6)], 40)
    dets = segment_resampled(disc_detector(), image, 1.4, threshold=0.5)
    assert len(dets) == 1 and _iou(dets[0].full_mask(120, 120), truths[0]) >= 0.98


# -- the shipped segmenter through the same path ----------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    import torch

    from cvat_tools.bundle import shipped_bundle
    from cvat_tools.segment.maskrcnn import MaskRCNNSegmenter

    torch.set_num_threads(1)
    path = shipped_bundle("segmenter")
    if path is None:
        pytest.skip("no shipped segmenter bundle")
    return MaskRCNNSegmenter.from_bundle(path)


def _bccd(bccd_dir, n):
    with open(bccd_dir / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"][:n]
    out = []
    for r in rows:
        image = cv2.cvtColor(cv2.imread(str(bccd_dir / r["image"])), cv2.COLOR_BGR2RGB)
        _, lab = cv2.connectedComponents((cv2.imread(str(bccd_dir / r["mask"]), 0) > 0).astype(np.uint8))
        out.append((image, lab))
    return out


def _matched(dets, lab, shape):
    """(ground-truth cells found at IoU >= 0.5, false detections)."""
    gts = [lab == i for i in range(1, lab.max() + 1) if (lab == i).sum() > 200]
    masks = [d.full_mask(*shape) for d in dets]
    found = sum(any(_iou(m, g) >= 0.5 for m in masks) for g in gts)
    false = sum(not any(_iou(m, g) >= 0.5 for g in gts) for m in masks)
    return found, len(gts), false


@pytest.mark.parametrize("zoom", [0.33, 3.0])
def test_shipped_segmenter_finds_wbcs_at_other_zooms(shipped, bccd_dir, zoom):
    found = total = false = 0
    for image, lab in _bccd(bccd_dir, 3):
        h, w = image.shape[:2]
        size = (round(w * zoom), round(h * zoom))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR)
        lab = cv2.resize(lab.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        dets = shipped.segment(image, 0.5)
        assert shipped.last_scale.method == "red_cells"
        f, t, x = _matched(dets, lab, image.shape[:2])
        found, total, false = found + f, total + t, false + x
    assert found == total and false == 0, (zoom, found, total, false)


def test_shipped_segmenter_on_a_tiled_wide_field(shipped, bccd_dir):
    # Four BCCD fields side by side at 1.5x (1920x1440): tiled; every WBC once.
    fields = _bccd(bccd_dir, 4)
    image = np.vstack([np.hstack([fields[0][0], fields[1][0]]), np.hstack([fields[2][0], fields[3][0]])])
    labs = [f[1] + (f[1] > 0) * 10 * i for i, f in enumerate(fields)]
    lab = np.vstack([np.hstack([labs[0], labs[1]]), np.hstack([labs[2], labs[3]])])
    _, lab = cv2.connectedComponents((lab > 0).astype(np.uint8))
    image = cv2.resize(image, (1920, 1440), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(lab.astype(np.uint8), (1920, 1440), interpolation=cv2.INTER_NEAREST)
    dets = shipped.segment(image, 0.5)
    found, total, false = _matched(dets, lab, image.shape[:2])
    assert found == total and false == 0, (found, total, false)


def test_shipped_segmenter_warns_on_grayscale(shipped, bccd_dir):
    from cvat_tools.segment.maskrcnn import GrayscaleWarning

    image, _ = _bccd(bccd_dir, 1)[0]
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    with pytest.warns(GrayscaleWarning, match="grayscale"):
        shipped.segment(grey, 0.5)
    assert shipped.last_scale.grayscale


def test_shipped_segmenter_finds_nothing_on_empty_frames(shipped):
    rng = np.random.default_rng(0)
    for frame in (np.zeros((480, 640, 3), np.uint8), rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)):
        assert shipped.segment(frame, 0.05) == [] and shipped.last_scale.empty


def test_fixed_mode_is_the_old_rule(shipped, bccd_dir):
    image, _ = _bccd(bccd_dir, 1)[0]
    shipped.set_scale("fixed")
    try:
        shipped.segment(image, 0.5)
        assert shipped.last_scale.method == "fixed" and shipped.last_scale.factor == pytest.approx(0.6)
    finally:
        shipped.set_scale("auto")
