"""Mask R-CNN segmenter: model, mask pasting, bundle round trip, training smoke test, and the
shipped bundle on real BCCD test images."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from cvat_tools.bundle import save_bundle
from cvat_tools.data.fields import read_index
from cvat_tools.errors import BundleError
from cvat_tools.imaging import load_image
from cvat_tools.metrics.segmentation import dice
from cvat_tools.models.registry import load_segmenter
from cvat_tools.segment.base import Detection, paste_mask
from cvat_tools.segment.maskrcnn import LABELS, MaskRCNNSegmenter, build_model

TINY = {"long_side": 128, "fpn_channels": 32, "box_head": 64, "mask_head": [32]}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(TINY, pretrained=False).eval()


def test_forward_on_small_image(tiny_model):
    seg = MaskRCNNSegmenter(tiny_model, long_side=128)
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    dets = seg.segment(image, threshold=0.0)
    assert isinstance(dets, list)
    for d in dets:
        assert isinstance(d, Detection) and d.label == "wbc" and 0 <= d.score <= 1
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= 120 and 0 <= y1 < y2 <= 90


def test_paste_maps_working_mask_to_full_resolution():
    # A disc at working size (scale 0.25) comes back at 4x, cropped, in the right place.
    prob = np.zeros((60, 80), np.float32)
    cv2.circle(prob, (40, 30), 10, 1.0, -1)
    mask = paste_mask(prob, np.array([30, 20, 51, 41]), 0.25, (240, 320))
    full = np.zeros((240, 320), bool)
    full[mask.top:mask.top + mask.height, mask.left:mask.left + mask.width] = mask.bitmap
    ref = np.zeros((240, 320), np.uint8)
    cv2.circle(ref, (162, 122), 42, 1, -1)
    assert dice(full, ref.astype(bool)) > 0.95
    assert mask.height < 100 and mask.width < 100  # stored cropped, not full size


def test_bundle_round_trip_and_refusals(tiny_model, tmp_path):
    arch = {"name": "maskrcnn", "backbone": "efficientnet_lite0", **TINY}
    path = save_bundle(tmp_path / "seg", kind="segmenter", state_dict=tiny_model.state_dict(),
                       labels=LABELS, architecture=arch)
    seg = MaskRCNNSegmenter.from_bundle(path)
    x = torch.rand(3, 96, 128)
    with torch.inference_mode():
        ref = tiny_model.backbone(x[None])["0"]
        got = seg.model.backbone(x[None])["0"]
    assert torch.allclose(ref, got, atol=0.05)  # fp16 storage
    assert isinstance(load_segmenter(path), MaskRCNNSegmenter)

    wrong_labels = save_bundle(tmp_path / "labels", kind="segmenter", state_dict=tiny_model.state_dict(),
                               labels=["cell", "other"], architecture=arch)
    with pytest.raises(BundleError, match="label set"):
        MaskRCNNSegmenter.from_bundle(wrong_labels)

    weights = path / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        MaskRCNNSegmenter.from_bundle(path)

    manifest = json.loads((tmp_path / "labels" / "manifest.json").read_text())
    manifest["architecture"]["fpn_channels"] = 48
    manifest["labels"] = LABELS
    manifest["weights"].pop("labels_sha256")  # an older bundle: the shape check must still hold
    (tmp_path / "labels" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="do not fit"):
        MaskRCNNSegmenter.from_bundle(tmp_path / "labels")


def _coco_folder(root):
    """Two tiny images, one polygon cell each, as 'cvat-tools export' writes COCO."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(2):
        img = np.full((96, 128, 3), (230, 200, 200), np.uint8)
        cx, cy = 40 + 30 * i, 48
        cv2.circle(img, (cx, cy), 18, (120, 60, 160), -1)
        cv2.imwrite(str(root / "images" / f"f{i}.png"), img)
        poly = [v for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)
                for v in (cx + 18 * np.cos(a), cy + 18 * np.sin(a))]
        images.append({"id": i + 1, "file_name": f"f{i}.png", "width": 128, "height": 96})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": [poly],
                     "bbox": [cx - 18, cy - 18, 36, 36], "area": 1000, "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "neutrophil"}]}))
    return root


def test_train_loop_smoke(tmp_path):
    from cvat_tools.train.segmentation import SegTrainConfig, train_segmenter

    data = _coco_folder(tmp_path / "export")
    cfg = SegTrainConfig(data=str(data), val=str(data), out=str(tmp_path / "bundle"), epochs=1, head_epochs=0,
                         long_side=128, warmup_iters=1, pretrained=False, threads=2)
    out = train_segmenter(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "segmenter" and manifest["labels"] == LABELS
    assert manifest["training"]["history"][0]["val"]["images"] == 2
    assert [h["epoch"] for h in manifest["training"]["history"]] == [1] and manifest["metrics"]["selected_epoch"] == 1
    assert (tmp_path / "bundle.ckpt" / "last.pt").is_file()
    # resume: a finished run has nothing left to do and rewrites the same bundle
    cfg.resume = True
    train_segmenter(cfg)
    assert isinstance(load_segmenter(out), MaskRCNNSegmenter)


# Mean WBC Dice of the shipped segmenter on the first 8 BCCD test fields (10 cells): measured
# 0.942 (all 55 test fields: 0.953, `bash benchmarks/segment_accuracy.sh`); the floor leaves
# 0.02 for platform noise, less than one cell going wrong (a missed cell costs 0.09).
BCCD_DICE_FLOOR = 0.92
# JTSC, every 30th of 300 cells: measured 0.942 (all 300: 0.943, same benchmark).
JTSC_DICE_FLOOR = 0.92


def test_shipped_bundle_on_bccd_test(bccd_dir, shipped_segmenter):
    seg = shipped_segmenter
    assert isinstance(seg, MaskRCNNSegmenter)
    scores = []
    for s in read_index(bccd_dir, "test")[:8]:
        image = load_image(s.image)
        h, w = image.shape[:2]
        dets = seg.segment(image)
        for g in s.load_masks():
            best = max((dice(d.full_mask(h, w), g) for d in dets), default=0.0)
            scores.append(best)
    assert len(scores) == 10 and np.mean(scores) >= BCCD_DICE_FLOOR, scores


def test_shipped_bundle_on_another_lab_jtsc(jtsc_dir, shipped_segmenter):
    """JTSC (rapid stain, yellow slide, 120x120 single cells) was never trained on or used for
    selection; the issue's target is mean Dice >= 0.85 (all 300: 0.943, MODEL_CARD.md); the
    floor is the measured value minus noise."""
    from cvat_tools.segment.single_cell import segment_single_cell

    seg = shipped_segmenter
    scores = []
    for s in read_index(jtsc_dir)[::30]:  # 10 cells; this subset measured 0.942
        image = load_image(s.image)
        h, w = image.shape[:2]
        dets = segment_single_cell(seg, image)
        for g in s.load_masks():
            scores.append(max((dice(d.full_mask(h, w), g) for d in dets), default=0.0))
    assert len(scores) == 10 and np.mean(scores) >= JTSC_DICE_FLOOR, scores


def test_any_size_input(tiny_model):
    """A 4032x3024-shaped input runs at working size and comes back in its own pixels."""
    seg = MaskRCNNSegmenter(tiny_model, long_side=128)
    image = np.zeros((3024, 4032, 3), np.uint8)
    image[:] = (230, 210, 220)
    dets = seg.segment(image, threshold=0.5)
    for d in dets:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= 4032 and 0 <= y1 < y2 <= 3024
