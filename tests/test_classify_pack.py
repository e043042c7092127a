"""Classifier packs (train where the raw data is not) and the batch maker behind GPU training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cvat_tools.bundle import load_bundle
from cvat_tools.classify.stain import cell_pixels
from cvat_tools.data.pack import read_pack, write_pack
from cvat_tools.errors import InputError
from cvat_tools.train.classification import BatchMaker, ClassifierConfig, prepare_data, train_classifier

from cli_run import run_cli
from crop_folders import SIZE, smooth_cell, smooth_cell_folder

@pytest.fixture()
def packed(tmp_path):
    root = smooth_cell_folder(tmp_path / "crops")
    cfg = ClassifierConfig(out=tmp_path / "unused", data=root, size=SIZE, progress=False)
    data = prepare_data(cfg)
    path = write_pack(tmp_path / "pack.npz", data, SIZE, cfg.seed, cfg.fractions)
    return root, data, path


def test_pack_round_trip_keeps_split_background_and_pixels(packed):
    root, data, path = packed
    meta, images = read_pack(path)
    assert meta["labels"] == data.labels and meta["size"] == SIZE
    assert set(images) == {"train", "val"}  # test pixels stay where the data is
    assert [f for f, _ in meta["files"]["test"]] == [str(s.path.relative_to(root)) for s in data.split["test"]]
    for name in ("train", "val"):
        original = data.crops[name].images
        assert images[name].shape == original.shape
        for a, b in zip(original, images[name]):
            assert np.array_equal(cell_pixels(a), cell_pixels(b))  # exact grey background restored
        assert np.abs(images[name].astype(int) - original).mean() < 4


def test_training_from_a_pack_writes_the_original_split(packed, tmp_path):
    root, data, path = packed
    cfg = ClassifierConfig(out=tmp_path / "b", packed=path, size=SIZE, epochs=1, batch_size=4, max_steps=1,
                           pretrained=False, progress=False, workers=2)
    bundle = load_bundle(train_classifier(cfg), kind="classifier")
    files = bundle.manifest["split"]["files"]
    for name in ("train", "val", "test"):
        assert [f for f, _ in files[name]] == [str(s.path.relative_to(root)) for s in data.split[name]]
    assert bundle.manifest["metrics"]["test"] is None  # scored where the test pixels are
    assert bundle.manifest["metrics"]["val_macro_f1"] >= 0


def test_pack_refuses_other_size_seed_or_mixed_sources(packed, tmp_path):
    root, _, path = packed
    with pytest.raises(InputError, match="--size"):
        prepare_data(ClassifierConfig(out=tmp_path / "b", packed=path, size=SIZE + 16, progress=False))
    with pytest.raises(InputError, match="seed"):
        prepare_data(ClassifierConfig(out=tmp_path / "b", packed=path, size=SIZE, seed=1, progress=False))
    with pytest.raises(InputError, match="replaces"):
        prepare_data(ClassifierConfig(out=tmp_path / "b", packed=path, data=root, size=SIZE, progress=False))
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="not a classifier pack"):
        prepare_data(ClassifierConfig(out=tmp_path / "b", packed=damaged, size=SIZE, progress=False))


def test_batches_do_not_depend_on_the_number_of_workers():
    rng = np.random.default_rng(1)
    images = np.stack([smooth_cell(rng) for _ in range(12)])
    picks = rng.integers(0, 12, 20)
    runs = []
    for workers in (0, 2):
        maker = BatchMaker(images, workers, low_res=0.5, stain_random=0.5)
        try:
            runs.append(list(maker.epoch(picks, 4, 5, (0, 3, 0))))
        finally:
            maker.close()
    assert len(runs[0]) == 5 and all(b.shape == (4, SIZE, SIZE, 3) for b in runs[0])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    assert not np.array_equal(runs[0][0], runs[0][1])


def test_cli_pack_then_refusals(tmp_path):
    root = smooth_cell_folder(tmp_path / "crops")
    code, out, _ = run_cli("train", "classifier", "--data", root, "--size", SIZE, "--pack-to", tmp_path / "p.npz")
    assert code == 0 and "wrote" in out and (tmp_path / "p.npz").is_file()
    code, _, err = run_cli("train", "classifier", "--data", root, "--size", SIZE, "--stain", "reinhard",
                           "--pack-to", tmp_path / "q.npz")
    assert code != 0 and "--stain" in err and not (tmp_path / "q.npz").exists()
    code, _, err = run_cli("train", "classifier", "--packed", tmp_path / "p.npz", "--size", SIZE + 16,
                           "--out", tmp_path / "b")
    assert code != 0 and f"holds {SIZE}-px crops" in err and not (tmp_path / "b").exists()
    code, _, err = run_cli("train", "classifier", "--data", root)
    assert code != 0 and "--out" in err
    if not torch.cuda.is_available():
        code, _, err = run_cli("train", "classifier", "--packed", tmp_path / "p.npz",  # size: the pack's
                               "--device", "cuda", "--out", tmp_path / "b")
        assert code != 0 and "no CUDA device" in err and not (tmp_path / "b").exists()
