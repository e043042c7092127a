"""Scale estimation (cvat_tools/scale.py): synthetic fields of known cell size, real BCCD
test fields at known zooms, the fallbacks, and the --cell-size / --um-per-px checks."""
from __future__ import annotations

import csv
import time

import cv2
import numpy as np
import pytest

from cvat_tools import scale as S
from cvat_tools.crops import cell_crop
from cvat_tools.errors import InputError

LONG_SIDE = 384


def smear(rbc: float, across: float = 8, seed: int = 0, wbc: bool = True) -> np.ndarray:
    """A synthetic smear: pink red cells of diameter ``rbc`` px (pale centre), ``across``
    cells across the short side, and one WBC (purple nucleus) of ~1.9 x ``rbc`` in the middle."""
    rng = np.random.default_rng(seed)
    side = int(rbc * across)
    img = np.empty((side, int(side * 4 / 3), 3), np.uint8)
    img[:] = (225, 222, 228)
    h, w = img.shape[:2]
    for _ in range(int(across * across * 0.5)):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = rbc / 2 * rng.uniform(0.92, 1.08)
        cv2.circle(img, (x, y), int(round(r)), (200, 140, 150), -1, cv2.LINE_AA)
        cv2.circle(img, (x, y), int(round(r * 0.35)), (215, 175, 185), -1, cv2.LINE_AA)
    if wbc:
        radius = int(rbc * 0.95)
        cv2.circle(img, (w // 2, h // 2), radius, (200, 180, 210), -1, cv2.LINE_AA)
        cv2.circle(img, (w // 2, h // 2), int(radius * 0.6), (90, 50, 140), -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), max(0.5, rbc / 40))
    noise = rng.normal(0, 3, img.shape).astype(np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def ruler_of(scale: S.Scale) -> float:
    return scale.cell_size / S.WBC_PER_RED_CELL


@pytest.mark.parametrize("rbc", [10, 24, 80, 160])
def test_synthetic_red_cells_measured_within_15_percent(rbc):
    sc = S.estimate_scale(smear(rbc), LONG_SIDE)
    assert sc.method == "red_cells" and sc.fallback is None
    assert abs(ruler_of(sc) / rbc - 1) <= 0.15, sc
    assert sc.factor == pytest.approx(S.canonical_wbc_px(LONG_SIDE) / sc.cell_size)


@pytest.mark.parametrize("rbc", [20, 370])
def test_12mp_photograph_bounded_and_measured(rbc):
    # Tiny cells (20 px in 4032 wide: measured in a sharp central window) and huge ones.
    image = cv2.resize(smear(rbc, across=3024 / rbc), (4032, 3024))
    t0 = time.perf_counter()
    sc = S.estimate_scale(image, LONG_SIDE)
    seconds = time.perf_counter() - t0
    assert sc.method == "red_cells" and abs(ruler_of(sc) / rbc - 1) <= 0.2, sc
    assert seconds < 3.0  # bounded (~0.25 s on an idle core): works on a downscaled copy


def _bccd_test(bccd_dir, n):
    with open(bccd_dir / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"][:n]
    return [cv2.cvtColor(cv2.imread(str(bccd_dir / r["image"])), cv2.COLOR_BGR2RGB) for r in rows]


@pytest.mark.parametrize("zoom", [0.25, 0.5, 2.0, 4.0])
def test_real_bccd_fields_at_known_zooms(bccd_dir, zoom):
    # The estimate follows the zoom: within 15% of zoom x (its estimate at zoom 1).
    ratios = []
    for image in _bccd_test(bccd_dir, 6):
        h, w = image.shape[:2]
        size = (round(w * zoom), round(h * zoom))
        zoomed = cv2.resize(image, size, interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR)
        base = S.estimate_scale(image, LONG_SIDE)
        est = S.estimate_scale(zoomed, LONG_SIDE)
        assert est.method == base.method == "red_cells"
        ratios.append(est.cell_size / (zoom * base.cell_size))
    assert np.median(np.abs(np.array(ratios) - 1)) <= 0.15, ratios
    assert np.mean(np.abs(np.array(ratios) - 1) <= 0.15) >= 0.8, ratios


def test_bccd_estimate_matches_the_masks(bccd_dir):
    # At zoom 1 the factor is the trained one (0.6 for BCCD at long side 384) within 15% in
    # the median: the calibration, checked on test fields (it was measured on train).
    factors = [S.estimate_scale(im, LONG_SIDE).factor for im in _bccd_test(bccd_dir, 12)]
    assert abs(np.median(factors) / 0.6 - 1) <= 0.15, factors


def test_single_cell_and_masked_crop_fallbacks(jtsc_dir):
    with open(jtsc_dir / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:8]
    for row in rows:
        image = cv2.cvtColor(cv2.imread(str(jtsc_dir / row["image"])), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(jtsc_dir / row["mask"]), 0) > 0
        truth = 2 * np.sqrt(mask.sum() / np.pi)
        sc = S.estimate_scale(image, LONG_SIDE)
        assert sc.method in ("single_cell", "red_cells")
        if sc.method == "single_cell":
            assert "red cells" in sc.fallback
        assert 0.6 <= sc.cell_size / truth <= 1.3, (row, sc)
        # The same cell as cvat-tools crop cuts it (grey around the mask), 3x larger.
        crop = cell_crop(cv2.resize(image, None, fx=3, fy=3), cv2.resize(mask.astype(np.uint8), None, fx=3, fy=3) > 0)
        assert S.is_masked_crop(crop) and not S.is_masked_crop(image)
        sc = S.estimate_scale(crop, LONG_SIDE)
        assert sc.method == "masked_crop" and abs(sc.cell_size / (3 * truth) - 1) <= 0.1, sc


@pytest.mark.parametrize("kind", ["black", "white", "noise", "grey_noise"])
def test_blank_frames_are_empty(kind):
    rng = np.random.default_rng(1)
    image = {
        "black": np.zeros((480, 640, 3), np.uint8),
        "white": np.full((480, 640, 3), 230, np.uint8),
        "noise": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "grey_noise": np.clip(200 + rng.normal(0, 10, (480, 640, 3)), 0, 255).astype(np.uint8),
    }[kind]
    sc = S.estimate_scale(image, LONG_SIDE)
    assert sc.method == "field_default" and sc.cell_size is None
    assert sc.factor == pytest.approx(LONG_SIDE / 640) and sc.empty
    assert "no stained object" in sc.fallback
    # A field of red cells without a dominant one is no empty frame: sized as a BCCD field.
    assert not S.estimate_scale(smear(40, across=2, wbc=False), LONG_SIDE).empty


def test_given_sizes_and_their_limits():
    image = smear(40)
    sc = S.estimate_scale(image, LONG_SIDE, cell_size=150)
    assert sc.method == "cell_size" and sc.factor == pytest.approx(S.canonical_wbc_px(LONG_SIDE) / 150)
    sc = S.estimate_scale(image, LONG_SIDE, um_per_px=0.1)
    assert sc.method == "um_per_px" and sc.cell_size == pytest.approx(130)
    for bad in (7.9, 2001, float("nan")):
        with pytest.raises(InputError, match="outside 8-2000"):
            S.estimate_scale(image, LONG_SIDE, cell_size=bad)
    with pytest.raises(InputError):
        S.check_cell_size(None, 0.0)
    with pytest.raises(InputError):
        S.check_cell_size(None, 10.0)  # 13 um / 10 um/px = 1.3 px: below 8 px
    # A 12 MP image told its cells are 8 px would need a 1 GP working image: capped.
    big = np.zeros((3024, 4032, 3), np.uint8)
    sc = S.estimate_scale(big, LONG_SIDE, cell_size=8)
    assert sc.factor * sc.factor * 3024 * 4032 <= S.MAX_WORK_PIXELS * 1.001 and "capped" in sc.fallback


def test_grayscale_detected():
    image = smear(40)
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    assert S.is_grayscale(grey) and not S.is_grayscale(image)
    assert S.estimate_scale(grey, LONG_SIDE).grayscale


def test_parse_scale_value():
    assert S.parse_scale_value("cell_size", " ") is None and S.parse_scale_value("x", "150") == 150.0
    with pytest.raises(InputError, match="must be a number"):
        S.parse_scale_value("cell_size", "big")
