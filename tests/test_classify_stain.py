"""Stain normalization: Reinhard moves a crop's cell LAB statistics to the reference; Macenko
finds a crop's two stain vectors and replaces them (and the concentration range) with the
reference's."""
from __future__ import annotations

import numpy as np
import pytest

from cvat_tools.classify.stain import (StainNormalizer, cell_pixels, lab_stats, macenko, macenko_stains,
                                      reinhard)
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
    with pytest.raises(BundleError):
        StainNormalizer("macenko")


# Two dyes as unit optical-density vectors (R, G, B): a PBC-like purple/pink pair and another
# lab's pair (bluer nuclear stain, more orange counterstain).
STAINS_A = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]]).T
STAINS_B = np.array([[0.75, 0.55, 0.37], [0.10, 0.70, 0.71]]).T


def _stained_cell(stains, rng, scale=(1.0, 1.0)):
    """A cell drawn from two concentration maps: nucleus (first dye), cytoplasm (second)."""
    stains = stains / np.linalg.norm(stains, axis=0, keepdims=True)
    yy, xx = np.mgrid[:72, :72]
    r = np.hypot(yy - 36, xx - 36)
    cell, nucleus = r < 30, np.hypot(yy - 33, (xx - 38) * 1.3) < 16
    conc = np.zeros((2, 72, 72))
    conc[0][nucleus] = rng.uniform(0.6, 1.2, nucleus.sum()) * scale[0]
    conc[1][cell] = rng.uniform(0.15, 0.45, cell.sum()) * scale[1]
    conc[0][cell & ~nucleus] = rng.uniform(0.0, 0.15, (cell & ~nucleus).sum()) * scale[0]
    od = np.einsum("cs,shw->hwc", stains, conc)
    img = np.clip(255 * np.exp(-od) - 1 + 0.5, 0, 255).astype(np.uint8)
    img[~cell] = BACKGROUND
    img[cell & (img == BACKGROUND).all(axis=-1), 0] += 1
    return img, cell


def test_macenko_finds_the_stains_and_maps_another_lab_onto_the_reference():
    rng = np.random.default_rng(0)
    ref, cell = _stained_cell(STAINS_A, np.random.default_rng(1))
    found, _ = macenko_stains(ref)
    truth = STAINS_A / np.linalg.norm(STAINS_A, axis=0, keepdims=True)
    cosines = (found * truth).sum(axis=0)
    assert cosines.min() > 0.97, cosines  # both dyes, in the right order
    norm = StainNormalizer.fit("macenko", [_stained_cell(STAINS_A, rng)[0] for _ in range(4)])
    # the same cell (same dye amounts) from the other lab, with a weaker nuclear stain
    other, _ = _stained_cell(STAINS_B, np.random.default_rng(1), scale=(0.6, 1.0))
    out = norm(other)
    before = np.abs(other[cell].astype(float) - ref[cell]).mean()
    after = np.abs(out[cell].astype(float) - ref[cell]).mean()
    assert after < 0.1 * before, (before, after)  # 23 -> 0.3 grey levels here; Reinhard: 8.5
    assert (out[~cell] == BACKGROUND).all() and cell_pixels(out)[cell].all()
    again = StainNormalizer.from_manifest(norm.to_manifest())
    assert np.array_equal(again(other), out)


def test_macenko_leaves_unusable_crops_alone():
    norm = StainNormalizer.fit("macenko", [_stained_cell(STAINS_A, np.random.default_rng(2))[0]])
    flat = np.full((40, 40, 3), 200, np.uint8)  # one colour: no stain spread to find
    assert np.array_equal(norm(flat), flat)
    tiny = np.empty((40, 40, 3), np.uint8)
    tiny[:] = BACKGROUND
    tiny[:3, :3] = (90, 40, 140)  # 9 stained pixels
    assert np.array_equal(norm(tiny), tiny)
    blank = np.empty((40, 40, 3), np.uint8)
    blank[:] = BACKGROUND
    assert np.array_equal(norm(blank), blank)
    assert np.array_equal(macenko(blank, norm.stains, norm.max_conc), blank)
    with pytest.raises(BundleError):
        StainNormalizer.fit("macenko", [blank])
    # a damaged manifest is refused when the bundle loads, not at the first crop
    for stains, conc in (([[1, 0], [0, 1]], [1, 1]), (norm.stains, [1.0, -1.0]),
                         (norm.stains, [1.0]), ([["x", 0]] * 3, [1, 1]), (norm.stains, [float("nan"), 1])):
        with pytest.raises(BundleError, match="macenko reference"):
            StainNormalizer("macenko", stains=stains, max_conc=conc)


def test_grey_keeps_only_luminance_and_survives_augmentation():
    from cvat_tools.train.augment import augment_batch

    rng = np.random.default_rng(3)
    purple, disk = _cell(rng, (120, 60, 160))
    yellow, _ = _cell(rng, (190, 150, 90))
    norm = StainNormalizer.fit("grey", [purple])
    out = norm(yellow)
    assert (out[disk][:, 0] == out[disk][:, 1]).all() and (out[disk][:, 1] == out[disk][:, 2]).all()
    assert (out[~disk] == BACKGROUND).all()  # background untouched
    assert not np.array_equal(norm(purple)[disk], out[disk])  # brightness still tells them apart
    assert StainNormalizer.from_manifest(norm.to_manifest()).method == "grey"
    # a colour jitter after normalization would teach colour the model never sees at inference
    jittered = augment_batch(np.stack([out, out]), np.random.default_rng(0), 0.0, 1.0)
    assert np.abs(jittered[..., 0].astype(int) - jittered[..., 2]).max() > 0
    again = norm.after_augmentation(jittered)
    assert (again[..., 0] == again[..., 2]).all()
    reinhard_norm = StainNormalizer.fit("reinhard", [purple])
    assert reinhard_norm.after_augmentation(jittered) is jittered  # only grey re-applies itself
