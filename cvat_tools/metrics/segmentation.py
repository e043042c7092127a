"""Segmentation metrics: COCO-style mask/box average precision and Dice of matched cells.

A small, dependency-free re-implementation of pycocotools' COCOeval for one category, no
crowd regions, all areas, maxDets=100, 101-point interpolated precision; tests check it
against pycocotools on generated data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100


def mask_iou(pred: list[np.ndarray], gt: list[np.ndarray]) -> np.ndarray:
    """IoU matrix (len(pred) x len(gt)) of full-image bool masks."""
    if not pred or not gt:
        return np.zeros((len(pred), len(gt)))
    p = np.stack([m.ravel() for m in pred]).astype(np.float32)
    g = np.stack([m.ravel() for m in gt]).astype(np.float32)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of x1,y1,x2,y2 boxes (exclusive ends, as Detection.box)."""
    pred, gt = np.asarray(pred, float).reshape(-1, 4), np.asarray(gt, float).reshape(-1, 4)
    if not len(pred) or not len(gt):
        return np.zeros((len(pred), len(gt)))
    ix = np.clip(np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    union = area(pred)[:, None] + area(gt)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / s if s else 1.0


@dataclass
class _ImageEval:
    scores: np.ndarray
    ious: np.ndarray          # detections (score-sorted) x gt
    n_gt: int


@dataclass
class APAccumulator:
    """Collect per-image IoU matrices; :meth:`ap` gives COCO average precision."""

    images: list[_ImageEval] = field(default_factory=list)

    def add(self, scores: list[float] | np.ndarray, ious: np.ndarray, n_gt: int) -> None:
        scores = np.asarray(scores, dtype=float)
        order = np.argsort(-scores, kind="mergesort")[:MAX_DETS]
        ious = np.asarray(ious, dtype=float).reshape(len(scores), n_gt)
        self.images.append(_ImageEval(scores[order], ious[order], n_gt))

    def ap(self, iou_threshold: float | None = None) -> float:
        """AP at one IoU threshold, or the mean over 0.50:0.05:0.95 (COCO's AP) when None."""
        thresholds = IOU_THRESHOLDS if iou_threshold is None else [iou_threshold]
        values = [self._ap_at(t) for t in thresholds]
        return float(np.mean(values))

    def _ap_at(self, t: float) -> float:
        n_gt = sum(im.n_gt for im in self.images)
        if n_gt == 0:
            return float("nan")
        scores, hits = [], []
        for im in self.images:
            taken = np.zeros(im.n_gt, dtype=bool)
            for d in range(len(im.scores)):
                # COCOeval: best still-free gt with IoU >= t (ties keep the later gt)
                best, best_iou = -1, min(t, 1 - 1e-10)
                for g in range(im.n_gt):
                    if taken[g] or im.ious[d, g] < best_iou:
                        continue
                    best, best_iou = g, im.ious[d, g]
                if best >= 0:
                    taken[best] = True
                scores.append(im.scores[d])
                hits.append(best >= 0)
        if not scores:
            return 0.0
        order = np.argsort(-np.asarray(scores), kind="mergesort")
        tp = np.cumsum(np.asarray(hits)[order])
        fp = np.cumsum(~np.asarray(hits)[order])
        recall = tp / n_gt
        precision = tp / np.maximum(tp + fp, np.spacing(1))
        # Monotone envelope, then sample at 101 recall points.
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.searchsorted(recall, RECALL_POINTS, side="left")
        sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
        return float(sampled.mean())


@dataclass
class SegmentationScores:
    """Everything `evaluate segmenter` prints, accumulated image by image."""

    masks: APAccumulator = field(default_factory=APAccumulator)
    boxes: APAccumulator = field(default_factory=APAccumulator)
    dices: list[float] = field(default_factory=list)   # one per ground-truth cell
    n_images: int = 0

    def add(self, pred_masks: list[np.ndarray], scores: list[float], gt_masks: list[np.ndarray],
            match_threshold: float = 0.5) -> None:
        """One image: full-image bool masks of predictions (with scores) and ground truth.
        Dice: each gt cell against its best-IoU prediction with score >= match_threshold
        (0 when none overlaps)."""
        self.n_images += 1
        ious = mask_iou(pred_masks, gt_masks)
        self.masks.add(scores, ious, len(gt_masks))
        pb = np.array([mask_box(m) for m in pred_masks]).reshape(-1, 4)
        gb = np.array([mask_box(m) for m in gt_masks]).reshape(-1, 4)
        self.boxes.add(scores, box_iou(pb, gb), len(gt_masks))
        confident = [i for i, s in enumerate(scores) if s >= match_threshold]
        for g, gt in enumerate(gt_masks):
            if not confident:
                self.dices.append(0.0)
                continue
            best = max(confident, key=lambda i: ious[i, g])
            self.dices.append(dice(pred_masks[best], gt) if ious[best, g] > 0 else 0.0)

    def summary(self) -> dict[str, float]:
        return {
            "images": self.n_images,
            "cells": len(self.dices),
            "mask_AP": self.masks.ap(),
            "mask_AP50": self.masks.ap(0.5),
            "mask_AP75": self.masks.ap(0.75),
            "box_AP50": self.boxes.ap(0.5),
            "mean_dice": float(np.mean(self.dices)) if self.dices else float("nan"),
        }
