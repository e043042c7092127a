"""Segmenter training for scale (issue 16): zoomed views keep masks on their cells, wide fields,
zoomed-in single cells, hard negatives with no target, grey copies, --init. Generated inputs."""
from __future__ import annotations

import random
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cvat_tools.data.fields import SegSample
from cvat_tools.train import segmentation_data as D

BG, CELL = (235, 225, 230), (40, 40, 160)


def _field(h: int = 480, w: int = 640, centres=((200, 150), (460, 330)), r: int = 40):
    """A light field with dark blue discs (the cells) and their exact masks."""
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BG
    masks = []
    for cx, cy in centres:
        m = np.zeros((h, w), np.uint8)
        cv2.circle(m, (cx, cy), r, 1, -1)
        image[m > 0] = CELL
        masks.append(m)
    return image, np.stack(masks)


def _registered(image: np.ndarray, masks: np.ndarray, tol: float = 0.9) -> None:
    """Inside each mask the pixels are cell-coloured (dark), outside none are (edges aside)."""
    dark = image.mean(2) < 120
    union = masks.any(0)
    for m in masks:
        inner = cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if inner.any():
            assert dark[inner].mean() > tol
    outer = cv2.dilate(union.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    assert dark[outer].mean() < 1 - tol


def _write_sample(tmp_path: Path, name: str, image: np.ndarray, masks: np.ndarray) -> SegSample:
    path = tmp_path / f"{name}.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return SegSample(path, lambda m=masks: [x.astype(bool) for x in m], name)


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.4, 6.0])
def test_zoom_window_keeps_masks_on_their_cells(scale):
    image, masks = _field()
    rng = random.Random(0)
    for _ in range(5):
        out, m = D.zoom_window(image, masks, scale, 384, rng, centre=(200, 150))
        assert out.shape[0] <= 384 and out.shape[1] <= 384 and m.shape[1:] == out.shape[:2]
        _registered(out, m)
        # the window was cut around the first cell, which is there at its zoomed size
        full = np.pi * (40 * scale) ** 2
        assert m[0].sum() > 0.2 * min(full, 384 * 384)
        if scale <= 1:
            assert m[0].sum() == pytest.approx(full, rel=0.15)


def test_tile_fields_makes_a_wide_field_with_every_cell():
    image, masks = _field()
    rng = random.Random(1)
    out, m = D.tile_fields((image, masks), lambda: _field(), 384 / 640 * 0.25, 384, rng)
    assert out.shape == (384, 384, 3)
    _registered(out, m)
    # 0.25x of the canonical size: 4 x 4 to 5 x 5 fields on the canvas, 2 cells each
    assert 20 <= len(m) <= 50
    assert all(x.sum() <= np.pi * (40 * 0.15) ** 2 * 1.3 for x in m)


def test_dataset_zoom_covers_quarter_to_four_times(tmp_path):
    samples = [_write_sample(tmp_path, f"f{i}", *_field()) for i in range(3)]
    sizes = {}
    for zoom in [(0.25, 0.26), (3.9, 4.0)]:
        ds = D.InstanceDataset(samples, 384, train=True, zoom_prob=1.0, zoom_range=zoom, seed=0)
        areas = []
        for i in range(3):
            im, m = ds.item(i)
            assert im.shape == (384, 384, 3)  # a wide field or a window, never a small image
            _registered(im, m, tol=0.8)
            areas += [x.sum() for x in m]
        sizes[zoom] = np.median(areas)
    canonical = np.pi * (40 * 384 / 640) ** 2  # a cell at the canonical field scale
    assert sizes[(0.25, 0.26)] < canonical / 10
    assert sizes[(3.9, 4.0)] > canonical * 5  # (cut by the 384 window when not centred)


def test_zoomed_cell_fills_the_frame_with_one_cell(tmp_path):
    image, masks = _field(360, 363, centres=((180, 180),), r=60)
    pool = [_write_sample(tmp_path, "cell", image, masks)]
    rng = random.Random(2)
    for _ in range(5):
        im, m = D.zoomed_cell(pool, rng, 384, fill=(0.5, 0.9))
        assert im.shape == (384, 384, 3) and len(m) == 1
        _registered(im, m)
        ys, xs = np.nonzero(m[0])
        side = max(np.ptp(ys), np.ptp(xs)) + 1
        assert 0.45 * 384 <= side <= 0.95 * 384
        assert not (m[0, 0].any() or m[0, -1].any() or m[0, :, 0].any() or m[0, :, -1].any())  # whole


def test_red_cell_window_holds_no_wbc_pixel(tmp_path):
    image, masks = _field()
    sample = _write_sample(tmp_path, "f", image, masks)
    rng = random.Random(3)
    got = [D.red_cell_window(sample, rng, 384) for _ in range(10)]
    assert sum(g is not None for g in got) >= 8
    for g in got:
        if g is not None:
            assert g.shape == (384, 384, 3) and (g.mean(2) < 120).mean() == 0
    full = _write_sample(tmp_path, "full", image, np.ones((1, 480, 640), np.uint8))
    assert D.red_cell_window(full, rng, 384) is None  # a field that is all WBC has no window


def test_hard_negatives_have_zero_targets_and_the_loss_handles_them(tmp_path):
    torch = pytest.importorskip("torch")
    samples = [_write_sample(tmp_path, f"f{i}", *_field()) for i in range(2)]
    ds = D.InstanceDataset(samples, 128, train=True, negatives=6, seed=0)
    assert len(ds) == 8
    for i in range(2, 8):
        x, t = ds[i]
        assert x.shape[0] == 3 and x.shape[1] == x.shape[2] == 128
        assert t["boxes"].shape == (0, 4) and t["labels"].numel() == 0 and t["masks"].shape == (0, 128, 128)
    frames = [D.blank_frame(random.Random(s), 64) for s in range(40)]
    assert any(f.max() < 15 for f in frames) and any(f.std() > 20 for f in frames)  # black and noise

    from cvat_tools.segment.maskrcnn import DEFAULT_ARCHITECTURE, build_model

    torch.manual_seed(0)
    model = build_model({**DEFAULT_ARCHITECTURE, "long_side": 128}, pretrained=False).train()
    negatives = [ds[i] for i in (2, 3)]
    losses = model([x for x, _ in negatives], [t for _, t in negatives])
    assert set(losses) >= {"loss_classifier", "loss_mask", "loss_objectness"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_mask"].detach()) == 0.0 and float(losses["loss_box_reg"].detach()) == 0.0  # nothing to outline
    sum(losses.values()).backward()  # and the background loss still trains
    grads = [p.grad for p in model.roi_heads.box_predictor.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_grey_copies_keep_their_targets():
    image, masks = _field(384, 384, centres=((190, 190),))
    rng = random.Random(4)
    out, m = D.augment(image, masks, rng, 384, balance=False, gray=1.0)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert len(m) == 1 and m.sum() == masks.sum()
    out, _ = D.augment(image, masks, random.Random(4), 384, balance=False, gray=0.0)
    assert not np.array_equal(out[..., 0], out[..., 2])


def test_recipe_keys_are_config_fields_and_defaults_keep_the_old_recipe():
    from cvat_tools.train.segmentation import SegTrainConfig

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "training" / "segmenter.yaml").read_text())
    known = {f.name for f in fields(SegTrainConfig)}
    assert set(recipe) <= known
    assert recipe["zoom_range"][0] <= 0.25 and recipe["zoom_range"][1] >= 4 and recipe["zoom_prob"] > 0
    assert recipe["negatives"] > 0 and recipe["zoomed_cells"] > 0 and recipe["gray"] > 0
    cfg = SegTrainConfig(data="d", out="o")  # the one set of defaults: nothing new unless asked
    assert (cfg.zoom_prob, cfg.negatives, cfg.zoomed_cells, cfg.gray, cfg.init) == (0.0, 0, 0, 0.0, None)


def test_init_loads_a_bundle_and_refuses_another_architecture(tmp_path):
    torch = pytest.importorskip("torch")
    from cvat_tools.bundle import read_manifest, save_bundle
    from cvat_tools.errors import InputError
    from cvat_tools.segment.maskrcnn import DEFAULT_ARCHITECTURE, LABELS, build_model
    from cvat_tools.train.segmentation import load_init

    arch = dict(DEFAULT_ARCHITECTURE)
    torch.manual_seed(1)
    source = build_model(arch, pretrained=False)
    save_bundle(tmp_path / "b", kind="segmenter", state_dict=source.state_dict(), labels=LABELS,
                architecture=arch, input_size=384, normalization={}, training={}, metrics={})
    torch.manual_seed(2)
    target = build_model(arch, pretrained=False)
    key = "roi_heads.mask_predictor.mask_fcn_logits.weight"
    assert not torch.equal(target.state_dict()[key], source.state_dict()[key])
    sha = load_init(target, str(tmp_path / "b"), arch)
    assert sha == read_manifest(tmp_path / "b")["weights"]["sha256"]
    assert torch.allclose(target.state_dict()[key], source.state_dict()[key], atol=1e-3)  # fp16 bundle
    with pytest.raises(InputError):
        load_init(target, str(tmp_path / "b"), {**arch, "box_head": 512})
