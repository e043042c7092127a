"""Our COCO-style AP against pycocotools (the reference) on generated data."""
from __future__ import annotations

import numpy as np
import pytest

from cvat_tools.metrics.segmentation import APAccumulator, SegmentationScores, box_iou, dice, mask_box

# pycocotools is a test dependency (pyproject [test]): the reference, never skipped
import pycocotools.coco as coco_mod  # noqa: E402
import pycocotools.cocoeval as cocoeval_mod  # noqa: E402
import pycocotools.mask as mask_utils  # noqa: E402


def _random_scene(rng, h=64, w=80):
    """A few ground-truth discs and noisy predictions (shifted, missed, spurious)."""
    yy, xx = np.mgrid[:h, :w]
    gts, preds, scores = [], [], []
    for _ in range(rng.integers(0, 4)):
        cy, cx, r = rng.integers(10, h - 10), rng.integers(10, w - 10), rng.integers(4, 10)
        gts.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        if rng.random() < 0.8:
            dy, dx, dr = rng.integers(-3, 4), rng.integers(-3, 4), rng.integers(-2, 3)
            preds.append((yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= max(r + dr, 2) ** 2)
            scores.append(float(rng.random()))
    for _ in range(rng.integers(0, 3)):
        cy, cx, r = rng.integers(5, h - 5), rng.integers(5, w - 5), rng.integers(3, 8)
        preds.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        scores.append(float(rng.random()))
    return gts, preds, scores


def _pycoco_ap(scenes, iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, gt_anns, dt_anns = [], [], []
    for i, (gts, preds, scores) in enumerate(scenes):
        h, w = 64, 80
        images.append({"id": i, "height": h, "width": w})
        for m in gts:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x1, y1, x2, y2 = mask_box(m)
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i, "category_id": 1, "segmentation": rle,
                            "area": float(m.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
        for m, s in zip(preds, scores):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x1, y1, x2, y2 = mask_box(m)
            dt_anns.append({"image_id": i, "category_id": 1, "segmentation": rle, "score": s,
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gt_anns, "categories": [{"id": 1, "name": "wbc"}]}
    gt.createIndex()
    dt = gt.loadRes(dt_anns) if dt_anns else COCO()
    ev = COCOeval(gt, dt, iou_type)
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    p = ev.eval["precision"][:, :, 0, 0, -1]  # T x R, cat 0, area all, maxDets 100
    ap = lambda q: float(np.mean(q[q > -1])) if (q > -1).any() else -1.0  # noqa: E731
    return ap(p), ap(p[0])


@pytest.mark.parametrize("seed", range(6))
def test_ap_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    scenes = [_random_scene(rng) for _ in range(8)]
    ours = SegmentationScores()
    for gts, preds, scores in scenes:
        ours.add(preds, scores, gts)
    assert sum(len(g) for g, _, _ in scenes) > 0  # every seed draws ground truth
    ref_ap, ref_ap50 = _pycoco_ap(scenes, "segm")
    assert ours.masks.ap() == pytest.approx(ref_ap, abs=1e-6)
    assert ours.masks.ap(0.5) == pytest.approx(ref_ap50, abs=1e-6)
    ref_box_ap, ref_box_ap50 = _pycoco_ap(scenes, "bbox")
    assert ours.boxes.ap(0.5) == pytest.approx(ref_box_ap50, abs=1e-6)


def test_perfect_and_empty_predictions():
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    acc = SegmentationScores()
    acc.add([m], [0.9], [m])
    s = acc.summary()
    assert s["mask_AP"] == pytest.approx(1.0) and s["mean_dice"] == pytest.approx(1.0)
    acc = SegmentationScores()
    acc.add([], [], [m])
    s = acc.summary()
    assert s["mask_AP"] == 0.0 and s["mean_dice"] == 0.0


def test_dice_and_box_iou():
    a = np.zeros((10, 10), bool)
    a[:, :5] = True
    b = np.zeros((10, 10), bool)
    b[:, 2:7] = True
    assert dice(a, b) == pytest.approx(2 * 30 / 100)
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(50 / 150)


def test_accumulator_orders_by_score():
    acc = APAccumulator()
    acc.add([0.2, 0.9], np.array([[0.9], [0.0]]), 1)  # the confident detection is wrong
    assert acc.ap(0.5) == pytest.approx(0.5, abs=0.01)
