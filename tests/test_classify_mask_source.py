"""Which mask cuts a PBC crop: the classical centre-cell mask, or the segmenter's centre
instance (the crops the pipeline feeds the classifier). Training, its cache and evaluation
must agree on it."""
from __future__ import annotations

import numpy as np
import pytest

from cvat_tools.bundle import read_manifest
from cvat_tools.crops import cell_crop
from cvat_tools.data import cells as D
from cvat_tools.data.eval_sets import load_eval_set
from cvat_tools.errors import InputError
from cvat_tools.formats.annotations import Mask
from cvat_tools.imaging import load_image
from cvat_tools.segment.base import Detection
from cvat_tools.segment.single_cell import centre_detection
from cvat_tools.train.classification import ClassifierConfig, prepare_data

from crop_folders import SIZE, make_crops, smooth_cell_folder


def _square(left: int, top: int, side: int = 10) -> Detection:
    return Detection(Mask(np.ones((side, side), bool), left, top), 0.9)


def test_centre_detection_picks_the_cell_nearest_the_centre():
    edge, centre, corner = _square(0, 45), _square(45, 45), _square(90, 90)
    assert centre_detection([edge, corner, centre], 100, 100) is centre
    assert centre_detection([edge, corner], 100, 100) is edge  # 40 px off vs 50 px
    assert centre_detection([], 100, 100) is None


@pytest.fixture(scope="module")
def pbc_three(pbc_dir):
    # WBCs only: the segmenter drops platelets (under 0.42 of a WBC across, segment/
    # prescreen.py), so a platelet image's crop falls back to the classical mask.
    samples = D.pbc_samples(pbc_dir)
    wbcs = [s for s in samples if s.path.parent.name != "platelet"]
    return [samples[0], samples[len(samples) // 2], wbcs[len(wbcs) // 4]]


def test_segmenter_mask_is_the_pipelines_cell_not_the_classical_one(pbc_three, shipped_paths):
    fn, name = D.mask_function("segmenter")
    sha = read_manifest(shipped_paths["segmenter"])["weights"]["sha256"]
    assert name == "segmenter:" + sha[:12] and D.mask_source_of(name) == "segmenter"
    classical, _ = D.mask_function("classical")
    ious, differ = [], 0
    for s in pbc_three:
        image = load_image(s.path)
        learned, old = fn(image), classical(image)
        assert learned.shape == image.shape[:2] and learned.dtype == bool
        ious.append((learned & old).sum() / (learned | old).sum())
        differ += not np.array_equal(learned, old)
    assert fn.fallbacks == 0  # the shipped segmenter finds each of these cells
    assert min(ious) > 0.6, ious  # the same cell ...
    assert differ == len(pbc_three)  # ... outlined by another model


def test_cache_of_another_mask_source_is_refused_not_overwritten(pbc_three, tmp_path):
    file, other = tmp_path / "classical.npz", tmp_path / "segmenter.npz"
    classical = D.build_cache(pbc_three, 64, True, file, progress=False, mask="classical")
    before = file.read_bytes()
    with pytest.raises(InputError, match="another --cache"):
        D.build_cache(pbc_three, 64, True, file, progress=False, mask="segmenter")
    assert file.read_bytes() == before  # a long cut is never silently replaced
    learned = D.build_cache(pbc_three, 64, True, other, progress=False, mask="segmenter")
    assert classical.info["mask"] == "segment.classical.centre_cell_mask"
    assert learned.info["mask"].startswith("segmenter:") and learned.info["segmenter_fallbacks"] == 0
    assert not np.array_equal(classical.images, learned.images)
    reused = D.build_cache(pbc_three, 64, True, other, progress=False, mask="segmenter")
    assert reused.info["cache"] == str(other) and np.array_equal(reused.images, learned.images)
    with pytest.raises(InputError, match="another --cache"):
        D.build_cache(pbc_three, 64, True, other, progress=False, mask="classical")
    with pytest.raises(InputError, match="mask source"):
        D.build_cache(pbc_three, 64, True, None, progress=False, mask="watershed")


@pytest.mark.parametrize("source", ["classical", "segmenter"])
def test_pbc_evaluation_cuts_crops_with_the_bundles_mask(pbc_dir, pbc_three, source):
    fn, name = D.mask_function(source)
    files = {"test": [[str(s.path.relative_to(pbc_dir.resolve())), s.label] for s in pbc_three]}
    manifest = {"split": {"files": files}, "training": {"data": {"crop_mask": name}}}
    evalset = load_eval_set(pbc_dir, "test", manifest)
    for s, crop in zip(pbc_three, evalset.crops):
        image = load_image(s.path)
        assert np.array_equal(crop, cell_crop(image, fn(image)))


def test_mask_option_only_for_pbc_and_must_match_a_pack(tmp_path):
    root = smooth_cell_folder(tmp_path / "crops")
    with pytest.raises(InputError, match="--mask"):
        prepare_data(ClassifierConfig(out=tmp_path / "b", data=root, size=SIZE, mask="segmenter", progress=False))
    from cvat_tools.data.pack import write_pack

    cfg = ClassifierConfig(out=tmp_path / "b", data=root, size=SIZE, progress=False)
    pack = write_pack(tmp_path / "p.npz", prepare_data(cfg), SIZE, cfg.seed, cfg.fractions)
    with pytest.raises(InputError, match="--mask classical"):
        prepare_data(ClassifierConfig(out=tmp_path / "b", packed=pack, size=SIZE, mask="segmenter", progress=False))


def test_evaluation_mask_override_and_its_refusal_outside_pbc(pbc_dir, bccd_dir, pbc_three):
    fn, _ = D.mask_function("segmenter")
    files = {"test": [[str(s.path.relative_to(pbc_dir.resolve())), s.label] for s in pbc_three[:1]]}
    classical_bundle = {"split": {"files": files}, "training": {"data": {"crop_mask": "segment.classical.centre_cell_mask"}}}
    evalset = load_eval_set(pbc_dir, "test", classical_bundle, mask="segmenter")
    image = load_image(pbc_three[0].path)
    assert evalset.mask == "segmenter" and np.array_equal(evalset.crops[0], cell_crop(image, fn(image)))
    with pytest.raises(InputError, match="--mask"):
        load_eval_set(bccd_dir, "test", None, mask="segmenter")


def test_cli_mask_options_refused_with_a_message(bccd_dir, tmp_path):
    from cli_run import run_cli

    code, out, err = run_cli("evaluate", "classifier", "--data", bccd_dir, "--mask", "segmenter")
    assert code != 0 and "--mask picks how PBC images are cut" in err and "Traceback" not in err
    root = smooth_cell_folder(tmp_path / "crops")
    code, _, err = run_cli("train", "classifier", "--data", root, "--size", SIZE, "--mask", "segmenter",
                           "--out", tmp_path / "b")
    assert code != 0 and "--mask" in err and not (tmp_path / "b").exists()



def test_refiner_cuts_pbc_sources_with_its_classifiers_mask(tmp_path):
    from cvat_tools.train.refiner import RefinerConfig, prepare_domains, source_mask

    def trained_on(name):
        return {"training": {"data": {"crop_mask": name}}}

    cfg = RefinerConfig(source=tmp_path, targets=[tmp_path], out=tmp_path / "ref")
    assert source_mask(cfg, trained_on("segmenter:d1f4686f82e9")) == "segmenter"
    assert source_mask(cfg, trained_on("segment.classical.centre_cell_mask")) == "classical"
    assert source_mask(cfg, None) == "classical"
    cfg.mask = "classical"  # an explicit --mask wins over the classifier's
    assert source_mask(cfg, trained_on("segmenter:d1f4686f82e9")) == "classical"

    root = make_crops(tmp_path / "crops", per_class=4)
    target = make_crops(tmp_path / "target", per_class=2, classes=("lymphocyte",))
    cfg = RefinerConfig(source=root, targets=[target], out=tmp_path / "ref", size=SIZE, mask="segmenter",
                        progress=False)
    with pytest.raises(InputError, match="--mask picks how PBC images are cut"):
        prepare_domains(cfg, None)


def test_refiner_source_crops_are_cut_with_the_classifiers_segmenter_mask(pbc_dir, tmp_path):
    from cvat_tools import labels as L
    from cvat_tools.train.refiner import RefinerConfig, prepare_domains

    samples = D.pbc_samples(pbc_dir)
    first = {lab: next(s for s in samples if s.label == lab) for lab in L.SHARED_CLASSES}
    split = {"train": list(first.values()), "val": [first["lymphocyte"]], "test": [first["monocyte"]]}
    _, name = D.mask_function("segmenter")
    manifest = {"split": {"files": D.split_to_manifest(split, pbc_dir)}, "training": {"data": {"crop_mask": name}}}
    target = make_crops(tmp_path / "target", per_class=2, classes=("lymphocyte",))
    cfg = RefinerConfig(source=pbc_dir, targets=[target], out=tmp_path / "ref", size=SIZE, stain="none",
                        progress=False)
    data = prepare_domains(cfg, manifest)
    assert data.info["crop_mask"] == name  # the classifier's mask, without being told
    fn, _ = D.mask_function("segmenter")
    crop = D.centre_crop(load_image(first["basophil"].path), SIZE, fn)[0]
    row = list(data.source_y).index(L.SHARED_CLASSES.index("basophil"))
    assert np.array_equal(data.source_x[row], crop)
