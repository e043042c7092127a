"""Reinhard stain normalization moves a crop's cell LAB statistics to the reference."""
from __future__ import annotations

import numpy as np
import pytest

from cvat_tools.classify.stain import StainNormalizer, cell_pixels, lab_stats, reinhard
from cvat_tools.crops import BACKGROUND
from cvat_tools.errors import BundleError


def _cell(rng, tint):
    img = np.empty((64, 64, 3), np.uint8)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 32) ** 2 + (xx - 32) ** 2 < 24 ** 2
    img[disk] = np.clip(rng.normal(tint, 18, size=(disk.sum(), 3)), 0, 255).astype(np.uint8)
    return img, disk


def test_reinhard_moves_lab_stats_to_reference():
    rng = np.random.default_rng(0)
    ref, _ = _cell(rng, (120, 60, 160))  # purple, PBC-like
    src, disk = _cell(rng, (190, 150, 90))  # yellowish, JTSC-like
    ref_mean, ref_std = lab_stats(ref)
    before = np.abs(lab_stats(src)[0] - ref_mean).sum()
    out = reinhard(src, ref_mean, ref_std)
    mean, std = lab_stats(out)
    assert np.abs(mean - ref_mean).sum() < 0.1 * before
    assert np.allclose(std, ref_std, rtol=0.25)
    assert (out[~disk] == BACKGROUND).all()  # background untouched
    assert cell_pixels(out)[disk].mean() > 0.99


def test_normalizer_round_trips_through_manifest():
    rng = np.random.default_rng(1)
    crops = [_cell(rng, (120, 60, 160))[0] for _ in range(3)]
    norm = StainNormalizer.fit("reinhard", crops)
    again = StainNormalizer.from_manifest(norm.to_manifest())
    src = _cell(rng, (190, 150, 90))[0]
    assert np.array_equal(norm(src), again(src))
    assert np.array_equal(StainNormalizer.fit("none", crops)(src), src)
    with pytest.raises(BundleError):
        StainNormalizer("macenko-ish")
    with pytest.raises(BundleError):
        StainNormalizer("reinhard")
