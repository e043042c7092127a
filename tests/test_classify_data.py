"""Classifier data: dedupe before split, stratified split, bad input refused before training."""
from __future__ import annotations

import numpy as np
import pytest

from cvat_tools.data import cells as D
from cvat_tools.errors import InputError
from cvat_tools.train.classification import ClassifierConfig, prepare_data
from crop_folders import make_crops, write_noise_crop


def test_dedupe_before_split_keeps_copies_out_of_other_splits(tmp_path):
    root = make_crops(tmp_path / "crops", per_class=12, dup_every=2)
    samples = D.folder_samples(root)
    kept, dropped = D.dedupe(samples)
    assert len(dropped) == 3 * 6 and len(kept) == 3 * 12
    split = D.stratified_split(kept, seed=3)
    digests = {k: {D.sha1_of(s.path) for s in v} for k, v in split.items()}
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]
    assert sum(len(v) for v in split.values()) == len(kept)
    # every class in every split, and the split is reproducible from the seed
    for part in split.values():
        assert {s.label for s in part} == {"lymphocyte", "monocyte", "eosinophil"}
    assert D.stratified_split(kept, seed=3) == split
    assert D.stratified_split(kept, seed=4) != split


def test_empty_class_folder_refused(tmp_path):
    root = make_crops(tmp_path / "crops")
    (root / "basophil").mkdir()
    with pytest.raises(InputError, match="basophil.*no images"):
        D.folder_samples(root)


def test_unknown_class_folder_refused(tmp_path):
    root = make_crops(tmp_path / "crops")
    write_noise_crop(root / "dragons" / "a.png", 99)
    with pytest.raises(InputError, match="dragons"):
        D.folder_samples(root)


def test_class_with_one_image_refused_before_training(tmp_path):
    root = make_crops(tmp_path / "crops")
    write_noise_crop(root / "basophil" / "only.png", 77)
    with pytest.raises(InputError, match=r"basophil \(1\)"):
        prepare_data(ClassifierConfig(out=tmp_path / "b", data=root, progress=False))


def test_unreadable_image_refused_naming_file(tmp_path):
    root = make_crops(tmp_path / "crops")
    (root / "lymphocyte" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="broken.png"):
        prepare_data(ClassifierConfig(out=tmp_path / "b", data=root, progress=False))


def test_missing_or_both_sources_refused(tmp_path):
    with pytest.raises(InputError, match="exactly one"):
        prepare_data(ClassifierConfig(out=tmp_path / "b"))
    with pytest.raises(InputError, match="not found"):
        D.folder_samples(tmp_path / "nope")


def test_target_without_images_refused(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        D.target_crops(tmp_path / "empty", 32)


def test_bccd_labelled_crops_are_single_wbc(bccd_dir):
    crops = D.bccd_crops(bccd_dir, ("test",), size=64)
    assert 40 <= len(crops) <= 55  # 55 test images, two-cell images and the unlabelled one dropped
    assert all(c.label in ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil") for c in crops)
    assert all(c.crop.shape == (64, 64, 3) for c in crops)
    assert len({c.name.split("#")[0] for c in crops}) == len(crops)


def test_pbc_fine_labels_skip_unknown_subtypes(pbc_dir):
    samples = D.pbc_samples(pbc_dir)
    labels = {s.label for s in samples}
    assert len(labels) == 11 and None not in labels
    assert not any(s.path.name.startswith(("IG_", "NEUTROPHIL_")) for s in samples)
    assert D.dataset_kind(pbc_dir) == "pbc"


def test_low_resolution_augmentation_keeps_size_and_drops_detail():
    import cv2

    from cvat_tools.train.augment import augment, low_resolution

    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)  # all fine detail
    coarse = low_resolution(crop, np.random.default_rng(1))
    assert coarse.shape == crop.shape and coarse.dtype == np.uint8
    sharpness = lambda im: cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
    assert sharpness(coarse) < 0.5 * sharpness(crop)
    # off by default: the same seed gives the same view with low_res=0 and without the argument
    a = augment(crop.copy(), np.random.default_rng(2))
    b = augment(crop.copy(), np.random.default_rng(2), low_res=0.0)
    assert np.array_equal(a, b)


def test_stain_randomization_moves_colour_far_and_keeps_the_shape():
    import cv2

    from cvat_tools.train.augment import _colour_jitter, augment, stain_randomization

    # a PBC-like violet cell: a dark nucleus disk in a pale violet cytoplasm disk
    crop = np.full((64, 64, 3), 128, np.uint8)
    cv2.circle(crop, (32, 32), 28, (190, 150, 200), -1)
    cv2.circle(crop, (32, 32), 14, (90, 40, 130), -1)

    def mean_hue_shift(fn, seed):
        shifts = []
        rng = np.random.default_rng(seed)
        for _ in range(40):
            out = fn(crop.copy(), rng)
            assert out.shape == crop.shape and out.dtype == np.uint8
            h0 = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)[32, 32, 0].astype(int)
            h1 = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)[32, 32, 0].astype(int)
            shifts.append(min(abs(h1 - h0), 180 - abs(h1 - h0)))
        return np.mean(shifts)

    # far larger hue moves than the everyday jitter (OpenCV hue: 0..180)
    assert mean_hue_shift(stain_randomization, 0) > 2 * mean_hue_shift(_colour_jitter, 0)
    # the nucleus stays darker than the cytoplasm: shape is what the model should keep reading
    out = stain_randomization(crop.copy(), np.random.default_rng(3))
    grey = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).astype(int)
    assert grey[32, 32] < grey[32, 52]
    # off by default: same seed, same view
    a = augment(crop.copy(), np.random.default_rng(5))
    b = augment(crop.copy(), np.random.default_rng(5), stain_random=0.0)
    assert np.array_equal(a, b)
    # on: the same seed now gives another view
    c = augment(crop.copy(), np.random.default_rng(5), stain_random=1.0)
    assert c.shape == crop.shape and not np.array_equal(a, c)
