"""The nucleus pre-screen and the nucleus check (segment/prescreen.py), windows around
candidates (segment/tiling.py plan_windows), and the shipped segmenter through both on real
BCCD, JTSC and PBC images."""
from __future__ import annotations

import csv
import importlib.util

import cv2
import numpy as np

from cvat_tools.segment.prescreen import keep_nucleated, nucleus_blobs, nucleus_contrast
from cvat_tools.segment.tiling import plan_windows, segment_resampled

from conftest import REPO
from test_scale_tiling import _bccd, _iou, disc_detector, discs_image, scattered


def _hit(blobs, mask):
    return any(mask[b.y0:b.y1, b.x0:b.x1].any() for b in blobs)


def _red_cell_quarters(fields, first_only=True):
    """The benchmark's red-cell-only crops (benchmarks/scale_sweep.py): what it measures."""
    spec = importlib.util.spec_from_file_location("scale_sweep", REPO / "benchmarks" / "scale_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    return sweep.red_cell_quarters(fields, first_only=first_only)


def test_prescreen_finds_every_held_out_bccd_wbc_at_three_zooms(bccd_dir):
    # Tuned on train + val; the 55 test fields are held out. WBCs ~174 px (the estimator's
    # cell size), and the same fields at 0.25x and 4x for a few.
    fields = _bccd(bccd_dir, None)
    for zoom, items in ((1.0, fields), (0.25, fields[:8]), (4.0, fields[:3])):
        missed = []
        for i, (image, lab) in enumerate(items):
            if zoom != 1.0:
                size = (round(image.shape[1] * zoom), round(image.shape[0] * zoom))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR)
                lab = cv2.resize(lab.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
            blobs = nucleus_blobs(image, 174.0 * zoom)
            missed += [(zoom, i) for c in range(1, lab.max() + 1)
                       if (lab == c).sum() > 30 * zoom * zoom and not _hit(blobs, lab == c)]
        assert not missed, missed


def test_prescreen_finds_jtsc_cells_on_a_yellow_slide(jtsc_dir):
    with open(jtsc_dir / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[::10]
    for r in rows:
        image = cv2.cvtColor(cv2.imread(str(jtsc_dir / r["image"])), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(jtsc_dir / r["mask"]), 0) > 0
        assert _hit(nucleus_blobs(image, 81.0), mask), r["image"]


def test_prescreen_skips_most_of_a_red_cell_only_field(bccd_dir):
    # Red cells alone: few blobs, so windows around them cover a small share of the field.
    quarters = _red_cell_quarters(_bccd(bccd_dir, 20))
    image = np.vstack([np.hstack(quarters[i:i + 4]) for i in range(0, 16, 4)])  # 1280 x 960
    blobs = nucleus_blobs(image, 174.0)
    area = sum((b.x1 - b.x0 + 130) * (b.y1 - b.y0 + 130) for b in blobs)  # + 0.75 WBC margins
    assert area < 0.25 * image.shape[0] * image.shape[1], (len(blobs), area)


def test_plan_windows_grow_merge_split_and_own_their_interior():
    wins = plan_windows([(100, 100, 140, 150), (160, 110, 200, 150), (1500, 900, 1540, 950)],
                        2000, 1200, margin=80, tile=768)
    assert len(wins) == 2  # the two near boxes share one window: cheaper than two
    a, b = sorted(wins, key=lambda t: t.x0)
    assert a.x0 <= 100 - 80 and a.x1 >= 200 + 80 and b.x0 <= 1500 - 80 and b.x1 >= 1540 + 80
    assert (b.x1 - b.x0) % 32 == 0 and (b.y1 - b.y0) % 32 == 0  # the model pads to 32 anyway
    assert b.cx0 == b.x0 + 40 and b.cy1 == b.y1 - 40  # a cell cut by an inner side is not its own
    huge = plan_windows([(100, 100, 1900, 1100)], 2000, 1200, margin=80, tile=768)
    assert len(huge) > 1 and all(t.x1 - t.x0 <= 768 and t.y1 - t.y0 <= 768 for t in huge)
    assert plan_windows([], 2000, 1200, margin=80) == []


def test_windows_run_only_where_the_screen_points_and_register_exactly():
    # 10 cells on a wide field: the screen names 4, only those are found, whole and on the
    # same pixels, and the detector sees far fewer pixels than the tiles would give it.
    h, w, radius = 1500, 2000, 75
    centres = scattered(np.random.default_rng(5), 10, radius, h, w)
    image, truths = discs_image(h, w, centres, radius)
    chosen = [(cx - 30, cy - 30, cx + 30, cy + 30) for cx, cy in centres[:4]]  # nucleus-sized
    calls, stats = [], {}
    dets = segment_resampled(disc_detector(calls), image, 0.7, threshold=0.5, overlap=160,
                             tile=512, screen=lambda: chosen, stats=stats)
    assert len(dets) == 4
    for truth in truths[:4]:
        assert max(_iou(d.full_mask(h, w), truth) for d in dets) >= 0.99
    assert stats["candidates"] == 4 and stats["tiles_run"] == len(calls)
    assert sum(a * b for a, b, _ in calls) < 0.5 * stats["canvas_pixels"]
    # An empty screen on a multi-tile canvas: nothing to look at.
    assert segment_resampled(disc_detector(), image, 0.7, 0.5, overlap=160, tile=512, screen=lambda: []) == []


def test_nucleus_contrast_tells_a_nucleus_from_red_cells():
    from cvat_tools.formats.annotations import Mask
    from cvat_tools.segment.base import Detection

    image = np.full((300, 400, 3), (225, 220, 222), np.uint8)  # the slide
    for x in range(40, 400, 60):  # pink red cells
        for y in (60, 240):
            cv2.circle(image, (x, y), 22, (205, 150, 165), -1)
    cv2.circle(image, (200, 150), 40, (215, 190, 205), -1)  # a WBC's pale cytoplasm
    cv2.circle(image, (200, 150), 25, (95, 60, 150), -1)  # its blue-purple nucleus

    def disc(cx, cy, r):
        yy, xx = np.mgrid[:2 * r + 1, :2 * r + 1]
        return Detection(Mask((xx - r) ** 2 + (yy - r) ** 2 <= r * r, cx - r, cy - r), 0.9)

    wbc, red = disc(200, 150, 40), disc(40, 60, 22)
    ratios = nucleus_contrast(image, [wbc, red])
    assert ratios[0] > 3 and ratios[1] < 1.2, ratios
    assert keep_nucleated(image, [wbc, red]) == [wbc]
    red.score = 0.98  # the model is sure: its call stands
    assert keep_nucleated(image, [wbc, red]) == [wbc, red]
    # Nothing else stained to compare with (a lone cell): every detection is kept.
    alone = np.full((300, 400, 3), (225, 220, 222), np.uint8)
    cv2.circle(alone, (200, 150), 40, (205, 150, 165), -1)
    assert nucleus_contrast(alone, [wbc]) is None and keep_nucleated(alone, [wbc]) == [wbc]


def test_plausible_size_drops_small_objects_inside_the_frame_only():
    from cvat_tools.formats.annotations import Mask
    from cvat_tools.segment.base import Detection
    from cvat_tools.segment.prescreen import plausible_size

    def square(x, y, side):
        return Detection(Mask(np.ones((side, side), bool), x, y), 0.9)

    big, small, cut = square(100, 100, 90), square(300, 100, 30), square(0, 200, 30)
    # 40 px minimum diameter: a 30-px square (34 px equivalent) inside goes, at the border stays
    assert plausible_size([big, small, cut], 40.0, 400, 500) == [big, cut]
    assert plausible_size([big, small, cut], 30.0, 400, 500) == [big, small, cut]


# -- the shipped segmenter ---------------------------------------------------------------------


def test_shipped_segmenter_screens_a_sparse_wide_field(shipped_segmenter, bccd_dir):
    # 3 x 3 fields at 1.4x (2688 x 2016, tiled): two hold their WBCs, seven red cells only.
    # Every WBC is found once, nothing else, and the model sees a fraction of the canvas.
    fields = _bccd(bccd_dir, None)
    quarters = _red_cell_quarters(fields)
    slots, labs, q = [], [], 0
    for i in range(9):
        if i in (1, 6):
            image, lab = fields[i]
        else:
            four = [quarters[(q + j) % len(quarters)] for j in range(4)]
            q += 4
            image, lab = np.vstack([np.hstack(four[:2]), np.hstack(four[2:])]), np.zeros((480, 640), np.int32)
        slots.append(image)
        labs.append(lab + (lab > 0) * 10 * i)
    image = np.vstack([np.hstack(slots[r * 3:r * 3 + 3]) for r in range(3)])
    lab = np.vstack([np.hstack(labs[r * 3:r * 3 + 3]) for r in range(3)])
    image = cv2.resize(image, (2688, 2016), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(lab.astype(np.uint16), (2688, 2016), interpolation=cv2.INTER_NEAREST)
    dets = shipped_segmenter.segment(image, 0.5)
    stats = shipped_segmenter.last_tiles
    assert stats["tiles_full"] > 1 and stats["pixels_run"] < 0.5 * stats["canvas_pixels"], stats
    gts = [lab == i for i in np.unique(lab) if i and (lab == i).sum() > 200]
    masks = [d.full_mask(2016, 2688) for d in dets]
    assert len(gts) >= 2 and len(masks) == len(gts)
    assert all(max(_iou(m, g) for m in masks) >= 0.5 for g in gts)


PBC_RED_CELLS_TAKEN = ["ig/PMY_976891.jpg", "ig/PMY_982613.jpg", "ig/PMY_985586.jpg",
                       "ig/PMY_989352.jpg", "lymphocyte/LY_986779.jpg", "monocyte/MO_995508.jpg"]
PBC_PLATELETS_TAKEN = ["basophil/BA_99625.jpg", "lymphocyte/LY_99358.jpg"]


def test_shipped_segmenter_drops_red_cells_without_a_nucleus(shipped_segmenter, pbc_dir, bccd_dir):
    # PBC images where the model also outlines a red cell (score >= 0.5, nucleus contrast
    # 0.95-1.24) or a platelet (0.3x a WBC across): one cell each, the centred one.
    from cvat_tools.imaging import load_image
    from cvat_tools.segment.single_cell import centre_detection

    for name in PBC_RED_CELLS_TAKEN + PBC_PLATELETS_TAKEN:
        image = load_image(pbc_dir / name)
        dets = shipped_segmenter.segment(image, 0.5)
        assert len(dets) == 1, (name, [d.score for d in dets])
        x1, y1, x2, y2 = centre_detection(dets, *image.shape[:2]).box
        assert x1 < image.shape[1] / 2 < x2 and y1 < image.shape[0] / 2 < y2
    # Red-cell-only crops of BCCD test fields: no WBC (the model took red cells for 2).
    for crop in _red_cell_quarters(_bccd(bccd_dir, 20)):
        assert shipped_segmenter.segment(crop, 0.5) == []
