"""Segmenter robustness: hard negatives and zoomed fields (issue 16, "training for scale").

    OMP_NUM_THREADS=1 python benchmarks/segmenter_robustness.py [--bundle DIR ...] [--threads 1]
        [--zooms 0.25 0.5 1 2 4] [--json out.json]

Default bundle: the shipped segmenter. Everything here is held out from training and model
selection (BCCD test split only, frames generated here with their own seed):

* **blank frames**: 20 generated 640x480 frames with no cell at all (black, near-black, white,
  grey, single colours, Gaussian / uniform / salt-and-pepper noise, smooth colour blobs,
  gradients, a checkerboard). Count of WBCs found (score >= 0.5).
* **red-cell-only crops**: 200x200 windows of the BCCD test fields with no WBC mask pixel
  (ground truth dilated by 5 px), on a 40-px grid, the two farthest from any WBC per field,
  fed as they are (the segmenter rescales them to its working size, a 1.9x zoom like a
  small analyser field). Count of WBCs found (score >= 0.5) and share of crops with any.
* **zoomed BCCD test fields**: each field's cells shown at ``z`` times the canonical size
  (BCCD fields at a 384 px long side), fed without the segmenter's own rescale: z >= 1 the
  whole field resampled by z (768x576 at 2x); z < 1 ``1/z`` x ``1/z`` test fields tiled into
  one wide field (2x2 at 0.5x) and rescaled to the canonical 384 px. Scores as
  ``cvat-tools evaluate segmenter`` (mask AP, AP50, Dice) plus recall and precision of cells
  at score >= 0.5 (matched at mask IoU >= 0.5) and the share of cells found exactly once.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from _data import DATA, REPO

sys.path.insert(0, str(REPO))
WORK = 384            # the segmenter's working long side
FIELD = 640           # a BCCD field's long side


def blank_frames(seed: int = 12345, h: int = 480, w: int = 640) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    grey = lambda v: np.full((h, w, 3), v, np.uint8)  # noqa: E731
    frames = [("black", grey(0)), ("near-black", grey(8)), ("white", grey(255)), ("grey", grey(128)),
              ("dark-grey", grey(50))]
    for name, c in [("pink", (230, 190, 200)), ("yellow", (220, 210, 150)), ("blue", (60, 70, 160)),
                    ("purple", (120, 60, 140))]:
        frames.append((name, np.broadcast_to(np.array(c, np.uint8), (h, w, 3)).copy()))
    for s in (10, 40, 80):
        frames.append((f"gauss-{s}", np.clip(128 + rng.normal(0, s, (h, w, 3)), 0, 255).astype(np.uint8)))
    frames.append(("gauss-dark", np.clip(10 + rng.normal(0, 10, (h, w, 1)), 0, 255).repeat(3, 2).astype(np.uint8)))
    frames.append(("uniform-noise", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    sp = grey(128)
    sp[rng.random((h, w)) < 0.05] = 0
    sp[rng.random((h, w)) < 0.05] = 255
    frames.append(("salt-pepper", sp))
    for k in (4, 12):
        small = rng.uniform(0, 255, (k, k, 3)).astype(np.float32)
        frames.append((f"blobs-{k}", np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)))
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    frames.append(("gradient", (np.array([20, 20, 60], np.float32) * (1 - ramp) + np.array([240, 220, 200], np.float32) * ramp)
                   .repeat(h, 0).astype(np.uint8)))
    yy, xx = np.mgrid[:h, :w]
    vignette = np.clip(255 * (1 - ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (w / 2) ** 2), 0, 255).astype(np.uint8)
    frames.append(("vignette", np.repeat(vignette[..., None], 3, 2)))
    frames.append(("checkerboard", np.repeat((((yy // 40 + xx // 40) % 2) * 200 + 30).astype(np.uint8)[..., None], 3, 2)))
    assert len(frames) == 20
    return frames


def red_cell_crops(samples, side: int = 200, stride: int = 40, per_field: int = 2) -> list[np.ndarray]:
    from cvat_tools.imaging import load_image

    out = []
    for s in samples:
        image = load_image(s.image)
        h, w = image.shape[:2]
        busy = np.zeros((h, w), np.uint8)
        for m in s.load_masks():
            busy |= m.astype(np.uint8)
        busy = cv2.dilate(busy, np.ones((11, 11), np.uint8))
        dist = cv2.distanceTransform(1 - busy, cv2.DIST_L2, 5)
        ii = cv2.integral(busy)
        cands = []
        for y in range(0, h - side + 1, stride):
            for x in range(0, w - side + 1, stride):
                if ii[y + side, x + side] - ii[y, x + side] - ii[y + side, x] + ii[y, x] == 0:
                    cands.append((-float(dist[y:y + side, x:x + side].min()), y, x))
        chosen: list[tuple[int, int]] = []
        for _, y, x in sorted(cands):
            if all(abs(y - cy) >= side // 2 or abs(x - cx) >= side // 2 for cy, cx in chosen):
                chosen.append((y, x))
            if len(chosen) == per_field:
                break
        out += [np.ascontiguousarray(image[y:y + side, x:x + side]) for y, x in chosen]
    return out


def count_cells(segmenter, images) -> dict:
    counts = [sum(d.score >= 0.5 for d in segmenter.segment(im, threshold=0.5)) for im in images]
    return {"images": len(images), "wbcs": int(sum(counts)), "images_with_wbc": int(sum(c > 0 for c in counts)),
            "max_per_image": int(max(counts)) if counts else 0}


def zoomed_sets(samples, z: float):
    """(image, gt masks, long side to feed) per evaluation image at zoom z."""
    from cvat_tools.imaging import load_image

    if z >= 1:
        for s in samples:
            image = load_image(s.image)
            yield image, s.load_masks(), round(max(image.shape[:2]) * WORK / FIELD * z)
        return
    k = round(1 / z)
    for i in range(0, len(samples), k * k):
        group = [samples[(i + j) % len(samples)] for j in range(k * k)]
        images = [load_image(s.image) for s in group]
        th, tw = images[0].shape[:2]
        canvas = np.zeros((k * th, k * tw, 3), np.uint8)
        gts = []
        for j, (s, im) in enumerate(zip(group, images)):
            y, x = (j // k) * th, (j % k) * tw
            im = cv2.resize(im, (tw, th)) if im.shape[:2] != (th, tw) else im
            canvas[y:y + th, x:x + tw] = im
            for m in s.load_masks():
                full = np.zeros(canvas.shape[:2], bool)
                full[y:y + th, x:x + tw] = cv2.resize(m.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST) > 0
                gts.append(full)
        yield canvas, gts, WORK


def score_zoom(model, arch, samples, z: float) -> dict:
    from cvat_tools.metrics.segmentation import SegmentationScores, mask_iou
    from cvat_tools.segment.maskrcnn import MaskRCNNSegmenter

    scores = SegmentationScores()
    found = once = n_pred = n_tp = 0
    n_gt = 0
    t0 = time.perf_counter()
    for image, gt, long_side in zoomed_sets(samples, z):
        seg = MaskRCNNSegmenter(model, long_side=long_side, balance=bool(arch.get("balance", False)))
        h, w = image.shape[:2]
        dets = seg.segment(image, threshold=0.05)
        pred = [d.full_mask(h, w) for d in dets]
        scores.add(pred, [d.score for d in dets], gt)
        conf = [p for p, d in zip(pred, dets) if d.score >= 0.5]
        iou = mask_iou(conf, gt) if conf and gt else np.zeros((len(conf), len(gt)))
        n_gt += len(gt)
        n_pred += len(conf)
        n_tp += int((iou.max(1) >= 0.5).sum()) if len(gt) and len(conf) else 0
        hits = (iou >= 0.5).sum(0) if len(conf) else np.zeros(len(gt))
        found += int((hits >= 1).sum())
        once += int((((iou > 0.1).sum(0) == 1) & (hits == 1)).sum()) if len(conf) else 0
    out = scores.summary()
    out.update(recall=found / max(n_gt, 1), precision=n_tp / max(n_pred, 1), found_once=once / max(n_gt, 1),
               seconds=round(time.perf_counter() - t0, 1))
    return out


def run(bundle: str, zooms: list[float]) -> dict:
    from cvat_tools.bundle import load_bundle
    from cvat_tools.data.fields import read_index
    from cvat_tools.segment.maskrcnn import LABELS, MaskRCNNSegmenter, build_model

    b = load_bundle(bundle, kind="segmenter", labels=LABELS)
    model = build_model(b.architecture, pretrained=False)
    model.load_state_dict(b.state_dict)
    model.eval()
    segmenter = MaskRCNNSegmenter(model, long_side=int(b.architecture.get("long_side", WORK)),
                                  balance=bool(b.architecture.get("balance", False)))
    test = read_index(DATA / "bccd_wbc", "test")
    result = {"bundle": str(bundle), "sha256": b.manifest["weights"]["sha256"][:12]}
    frames = blank_frames()
    blank = count_cells(segmenter, [f for _, f in frames])
    blank["by_frame"] = {name: sum(d.score >= 0.5 for d in segmenter.segment(f, threshold=0.5)) for name, f in frames}
    result["blank_frames"] = blank
    result["red_cell_crops"] = count_cells(segmenter, red_cell_crops(test))
    gray = [cv2.cvtColor(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB) for im, _, _ in zoomed_sets(test, 1)]
    found = [len([d for d in segmenter.segment(g, threshold=0.5)]) for g in gray]
    result["grey_fields"] = {"images": len(gray), "with_a_wbc": int(sum(f > 0 for f in found)),
                             "cells_true": sum(len(s.load_masks()) for s in test), "wbcs": int(sum(found))}
    result["zoom"] = {}
    for z in zooms:
        result["zoom"][str(z)] = score_zoom(model, b.architecture, test, z)
        print(f"  zoom {z}: {json.dumps({k: round(v, 3) for k, v in result['zoom'][str(z)].items()})}", flush=True)
    return result


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", action="append", default=None, help="segmenter bundle(s); default: shipped")
    ap.add_argument("--zooms", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (DATA / "bccd_wbc" / "index.csv").is_file():
        sys.exit(f"skip: {DATA}/bccd_wbc not found")
    from cvat_tools.bundle import shipped_bundle

    results = []
    for bundle in args.bundle or [str(shipped_bundle("segmenter"))]:
        print(bundle, flush=True)
        r = run(bundle, args.zooms)
        print(json.dumps({k: v for k, v in r.items() if k != "zoom"}), flush=True)
        results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
