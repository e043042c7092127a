"""PBC pseudo-labels for the segmenter: trusted classical masks, train split only, mosaics."""
from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvat_tools.data import fields as F
from cvat_tools.data.cells import dedupe, pbc_samples, stratified_split
from cvat_tools.errors import InputError
from cvat_tools.train import segmentation_data as S


def _disk_image(size=200, centre=(100, 100), radius=40):
    """A purple cell on a cream slide: what the classical centre-cell mask finds."""
    image = np.full((size, size, 3), (235, 225, 205), np.uint8)
    cv2.circle(image, centre, radius, (150, 110, 190), -1)
    cv2.circle(image, centre, radius // 2, (70, 30, 120), -1)
    return image


def test_trusted_mask_kept_concave_or_border_masks_refused(monkeypatch):
    image = _disk_image()
    disk = np.zeros((200, 200), bool)
    cv2.circle(disk.view(np.uint8), (100, 100), 40, 1, -1)
    monkeypatch.setattr("cvat_tools.segment.classical.centre_cell_mask", lambda im: disk)
    assert F.pseudo_label_mask(image) is disk

    # A red cell glued to the WBC: two overlapping disks, clearly not convex.
    glued = disk.copy()
    cv2.circle(glued.view(np.uint8), (168, 100), 28, 1, -1)  # solidity 0.86
    monkeypatch.setattr("cvat_tools.segment.classical.centre_cell_mask", lambda im: glued)
    assert F.pseudo_label_mask(image) is None

    cut = np.zeros((200, 200), bool)
    cut[50:150, 0:80] = True  # touches the left border: the cell is cut, its outline unknown
    monkeypatch.setattr("cvat_tools.segment.classical.centre_cell_mask", lambda im: cut)
    assert F.pseudo_label_mask(image) is None

    monkeypatch.setattr("cvat_tools.segment.classical.centre_cell_mask", lambda im: None)
    assert F.pseudo_label_mask(image) is None


def test_pseudo_label_pool_is_the_classifier_train_split_of_wbcs(pbc_dir):
    pool = F.pbc_pseudo_samples(pbc_dir, seed=0)
    kept, _ = dedupe(pbc_samples(pbc_dir))
    split = stratified_split(kept, seed=0)
    held_out = {s.path for s in split["val"] + split["test"]}
    train = {s.path: s.label for s in split["train"]}
    paths = {s.image for s in pool}
    assert len(paths) == len(pool) > 3000
    assert not paths & held_out, "pseudo-labels must not use the classifier's val/test images"
    assert {train[p] for p in paths} == set(F.PSEUDO_LABEL_CLASSES)  # no erythroblast, no platelet
    # Most real PBC WBCs get a trusted mask of plausible size (cells ~130 px across).
    rng = random.Random(0)
    found = 0
    for s in rng.sample(pool, 20):
        masks = s.load_masks()
        if masks:
            found += 1
            diameter = 2 * np.sqrt(masks[0].sum() / np.pi)
            assert 50 < diameter < 260, (s.image, diameter)
    assert found >= 14, found


def test_mosaic_places_four_cells_one_per_quadrant(tmp_path):
    samples = []
    for k in range(5):
        path = tmp_path / f"{k}.png"
        cv2.imwrite(str(path), _disk_image())
        mask = np.zeros((200, 200), bool)
        cv2.circle(mask.view(np.uint8), (100, 100), 40, 1, -1)
        samples.append(F.SegSample(path, (lambda m=mask: [m]), path.name))
    image, masks = S.mosaic(samples, random.Random(0))
    assert image.shape == (400, 400, 3) and masks.shape == (4, 400, 400)
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        qy, qx = k // 2, k % 2
        assert ys.min() >= 200 * qy and ys.max() < 200 * (qy + 1)
        assert xs.min() >= 200 * qx and xs.max() < 200 * (qx + 1)

    untrusted = [F.SegSample(s.image, (lambda: []), s.name) for s in samples]
    with pytest.raises(InputError, match="too few images with a trusted mask"):
        S.mosaic(untrusted, random.Random(0), tries=2)


def test_dataset_adds_mosaics_at_field_scale(tmp_path):
    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), _disk_image())
    mask = np.zeros((200, 200), bool)
    cv2.circle(mask.view(np.uint8), (100, 100), 40, 1, -1)
    pool = [F.SegSample(Path(path), (lambda: [mask]), "cell.png")]
    ds = S.InstanceDataset([], long_side=320, train=False, mosaic_pool=pool, mosaics=3)
    assert len(ds) == 3
    x, target = ds[0]
    # 400 px of mosaic at 320/640 -> 200 px; four cells of radius 40 -> 20 px.
    assert tuple(x.shape) == (3, 200, 200)
    assert len(target["boxes"]) == 4
    widths = (target["boxes"][:, 2] - target["boxes"][:, 0]).numpy()
    assert np.all(np.abs(widths - 40) <= 3), widths
    assert S.InstanceDataset([], 320, train=True, mosaic_pool=[], mosaics=3).__len__() == 0
