"""The segmenter across magnifications: zoom sweep, wide mosaics, zoomed single cells,
empty frames, speed (issue 16).

    python benchmarks/scale_sweep.py [--threads 2] [--bccd-limit N] [--jtsc-limit N]
        [--modes auto fixed] [--parts zoom mosaic single negatives speed] [--json out.json]
    python benchmarks/scale_sweep.py --calibrate     # re-measure scale.WBC_PER_RED_CELL

(a) zoom: each BCCD test field (index.csv split=test) and JTSC image resampled by 0.25 ...
    4 (masks nearest-neighbour): WBC recall / precision (score >= 0.5, mask IoU >= 0.5),
    mask AP50, mean Dice of each WBC with its best prediction; also the scale estimate's
    error against the zoom (est(z) / (z * est(1))).
(b) mosaic: k x k BCCD test fields side by side (k = 2..5) as one wide field, same pixels
    per cell; scored field by field.
(c) single: JTSC images upscaled 3.5x (a 420x420 frame filled by the cell) and PBC images:
    share with exactly one instance (score >= 0.5); JTSC Dice of the centre instance.
(d) negatives: 20 blank / black / noise frames and red-cell-only BCCD crops: WBCs found.
(e) speed: a 640x480 BCCD field and a 4032x3024 photograph with ~157-px WBCs (a 7x7 mosaic
    of BCCD test fields resized by 0.9: "sparse", 6 fields with WBCs among red-cell-only
    fields, as a real photo; "dense", a WBC in every field), each in its own process:
    seconds (scale estimation included), peak RSS, the tiles run / planned, recall.

``--modes fixed`` is the rule before scale estimation (long side -> working size).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _data beside this file, however it is loaded
from _data import DATA, REPO  # noqa: E402

sys.path.insert(0, str(REPO))
ZOOMS = (0.25, 0.33, 0.5, 1.0, 2.0, 3.0, 4.0)
MOSAIC_K = (2, 3, 4, 5)
SCORE = 0.5  # detection score of a reported cell


# ---------------------------------------------------------------------------------------------
# data


def bccd(split: str = "test", limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB image, int32 label image of WBCs) of a BCCD split."""
    from cvat_tools.imaging import load_image

    with open(DATA / "bccd_wbc" / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    out = []
    for r in rows[:limit]:
        mask = cv2.imread(str(DATA / "bccd_wbc" / r["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        _, lab = cv2.connectedComponents(mask.astype(np.uint8))
        out.append((load_image(DATA / "bccd_wbc" / r["image"]), lab.astype(np.int32)))
    return out


def jtsc(limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    from cvat_tools.imaging import load_image

    with open(DATA / "jtsc_wbc" / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if limit:
        rows = rows[:: max(1, len(rows) // limit)][:limit]
    out = []
    for r in rows:
        mask = cv2.imread(str(DATA / "jtsc_wbc" / r["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        out.append((load_image(DATA / "jtsc_wbc" / r["image"]), mask.astype(np.int32)))
    return out


def zoomed(image: np.ndarray, lab: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    size = (max(8, round(w * z)), max(8, round(h * z)))
    if size == (w, h):
        return image, lab
    interp = cv2.INTER_AREA if z < 1 else cv2.INTER_LINEAR
    return (cv2.resize(image, size, interpolation=interp),
            cv2.resize(lab.astype(np.uint16), size, interpolation=cv2.INTER_NEAREST).astype(np.int32))


def mosaic(fields: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    rows_i, rows_l = [], []
    offset = 0
    for r in range(k):
        ims, labs = [], []
        for c in range(k):
            im, lab = fields[r * k + c]
            ims.append(im)
            labs.append(np.where(lab > 0, lab + offset, 0))
            offset += int(lab.max())
        rows_i.append(np.hstack(ims))
        rows_l.append(np.hstack(labs))
    return np.vstack(rows_i), np.vstack(rows_l)


# ---------------------------------------------------------------------------------------------
# scoring


class Tally:
    """Recall / precision at score >= SCORE and IoU >= 0.5, AP50 and Dice (metrics/segmentation.py)."""

    def __init__(self) -> None:
        from cvat_tools.metrics.segmentation import SegmentationScores

        self.scores = SegmentationScores()
        self.tp = self.fp = self.gt = 0
        self.seconds = 0.0
        self.n = 0

    def add(self, dets, lab: np.ndarray, seconds: float = 0.0, gt_min_area: int = 30) -> None:
        from cvat_tools.metrics.segmentation import mask_iou

        h, w = lab.shape
        ids = [i for i in np.unique(lab) if i and (lab == i).sum() >= gt_min_area]
        gts = [lab == i for i in ids]
        preds = [d.full_mask(h, w) for d in dets]
        scores = [d.score for d in dets]
        self.scores.add(preds, scores, gts)
        confident = [i for i, s in enumerate(scores) if s >= SCORE]
        ious = mask_iou([preds[i] for i in confident], gts) if confident and gts else np.zeros((len(confident), len(gts)))
        used: set[int] = set()
        for p in np.argsort([-scores[i] for i in confident]):  # greedy, best score first
            g = int(np.argmax(ious[p])) if gts else -1
            if g >= 0 and ious[p, g] >= 0.5 and g not in used:
                used.add(g)
                self.tp += 1
            else:
                self.fp += 1
        self.gt += len(gts)
        self.seconds += seconds
        self.n += 1

    def row(self) -> dict:
        s = self.scores.summary()
        return {"images": self.n, "cells": self.gt,
                "recall": self.tp / max(self.gt, 1), "precision": self.tp / max(self.tp + self.fp, 1),
                "mask_AP50": s["mask_AP50"], "dice": s["mean_dice"],
                "s_per_image": self.seconds / max(self.n, 1)}


def timed(seg, image, threshold=0.05):
    t0 = time.perf_counter()
    dets = seg.segment(image, threshold)
    return dets, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# parts


def part_zoom(seg, bccd_fields, jtsc_images) -> list[dict]:
    rows = []
    for name, items in (("bccd", bccd_fields), ("jtsc", jtsc_images)):
        base = {}
        for z in ZOOMS:
            tally, errors = Tally(), []
            for i, (image, lab) in enumerate(items):
                im, lb = zoomed(image, lab, z)
                dets, sec = timed(seg, im)
                tally.add(dets, lb, sec, gt_min_area=max(4, int(30 * z * z)))
                sc = getattr(seg, "last_scale", None)
                if sc is not None and sc.cell_size:
                    if z == 1.0:
                        base[i] = sc.cell_size
                    errors.append((i, sc.cell_size))
            row = {"part": "zoom", "data": name, "zoom": z, **tally.row()}
            if base:
                rel = [c / (z * base[i]) for i, c in errors if i in base]
                row["scale_within_15pct"] = float(np.mean(np.abs(np.array(rel) - 1) <= 0.15)) if rel else None
            rows.append(row)
            emit(row)
    return rows


def part_mosaic(seg, fields, per_k: int = 1) -> list[dict]:
    rows = []
    for k in MOSAIC_K:
        tally = Tally()
        for m in range(per_k):
            start = (m * k * k) % max(1, len(fields) - k * k + 1)
            chosen = fields[start:start + k * k]
            if len(chosen) < k * k:
                break
            image, lab = mosaic(chosen, k)
            dets, sec = timed(seg, image)
            # Score field by field (full-size masks of a 3200x2400 mosaic are large).
            fh, fw = chosen[0][0].shape[:2]
            for r in range(k):
                for c in range(k):
                    y0, x0 = r * fh, c * fw
                    local = []
                    for d in dets:
                        x1, y1, x2, y2 = d.box
                        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                        if x0 <= cx < x0 + fw and y0 <= cy < y0 + fh:
                            local.append(_shifted(d, -x0, -y0))
                    tally.add(local, lab[y0:y0 + fh, x0:x0 + fw], sec / (k * k))
        row = {"part": "mosaic", "data": "bccd", "k": k, "size": f"{k * 640}x{k * 480}", **tally.row()}
        row["s_per_image"] *= k * k  # per mosaic
        rows.append(row)
        emit(row)
    return rows


def _shifted(det, dx, dy):
    from cvat_tools.formats.annotations import Mask
    from cvat_tools.segment.base import Detection

    m = det.mask
    return Detection(Mask(m.bitmap, m.left + dx, m.top + dy), det.score, det.label)


def part_single(seg, jtsc_images, pbc_limit: int) -> list[dict]:
    from cvat_tools.segment.single_cell import centre_detection

    rows = []
    one = dices = 0
    dice_list = []
    for image, lab in jtsc_images:
        im, lb = zoomed(image, lab, 3.5)
        dets = [d for d in seg.segment(im, SCORE)]
        one += len(dets) == 1
        det = centre_detection(dets, *im.shape[:2])
        if det is not None:
            p = det.full_mask(*im.shape[:2])
            g = lb > 0
            dice_list.append(2 * (p & g).sum() / (p.sum() + g.sum()))
        else:
            dice_list.append(0.0)
    row = {"part": "single", "data": "jtsc x3.5 (420x420)", "images": len(jtsc_images),
           "exactly_one": one / max(len(jtsc_images), 1), "dice": float(np.mean(dice_list))}
    rows.append(row)
    emit(row)
    from cvat_tools.imaging import load_image

    paths = []
    for cls in sorted(p for p in (DATA / "pbc").iterdir() if p.is_dir() and p.name != "platelet"):
        paths += sorted(cls.glob("*.jpg"))[-max(1, pbc_limit // 7):]
    counts, whole = [], []
    for p in paths:
        image = load_image(p)
        dets = seg.segment(image, SCORE)
        counts.append(len(dets))
        whole.append(sum(not _touches_border(d, *image.shape[:2]) for d in dets))
    row = {"part": "single", "data": "pbc 360x363 (no platelets)", "images": len(paths),
           "exactly_one": float(np.mean([c == 1 for c in counts])) if counts else None,
           # cells cut by the frame's edge are neighbours, not the imaged cell
           "exactly_one_whole": float(np.mean([c == 1 for c in whole])) if whole else None}
    rows.append(row)
    emit(row)
    return rows


def _touches_border(det, h: int, w: int) -> bool:
    x1, y1, x2, y2 = det.box
    return x1 <= 0 or y1 <= 0 or x2 >= w or y2 >= h


def negatives(fields) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(5):
        frames.append(("black", np.full((480, 640, 3), i * 3, np.uint8)))
        slide = np.clip(rng.normal((225, 215, 220), 4, (480, 640, 3)), 0, 255).astype(np.uint8)
        frames.append(("blank slide", slide))
        frames.append(("noise", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)))
        frames.append(("grey noise", np.clip(rng.normal(200, 12, (480, 640, 3)), 0, 255).astype(np.uint8)))
        # Not in the list: colour blobs that look like a field of cells (hard).
        blob = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 6)
        frames.append(("blurred colour noise (hard, extra)", cv2.normalize(blob, None, 0, 255, cv2.NORM_MINMAX)))
    # the first WBC-free quarter of each field: red cells only
    frames += [("red cells only", q) for q in red_cell_quarters(fields, first_only=True)]
    return frames


def part_negatives(seg, fields) -> list[dict]:
    rows = []
    by: dict[str, list[int]] = {}
    for kind, frame in negatives(fields):
        by.setdefault(kind, []).append(len(seg.segment(frame, SCORE)))
    for kind, counts in by.items():
        row = {"part": "negatives", "data": kind, "images": len(counts), "wbcs_found": int(sum(counts)),
               "frames_with_a_wbc": int(sum(c > 0 for c in counts))}
        rows.append(row)
        emit(row)
    return rows


PHOTO = (4032, 3024)
PHOTO_GRID = 7  # 7 x 7 BCCD fields (4480 x 3360) resized by 0.9: WBCs ~157 px (BCCD median 174)
# Slots that hold a whole BCCD test field (its WBCs); the rest hold red cells only. A smear
# photograph with 150-px WBCs covers ~500 WBC areas, ~1500 red cells; at 1 WBC per 500-1000
# red cells it holds 2-3 WBCs (10 in a dense leukocytosis region): 6 fields (~7 WBCs) is a
# busy photo. "dense" puts a field with its WBCs in every slot (49 fields, ~57 WBCs): the
# worst case, every tile holds a WBC.
SPARSE_SLOTS = ((0, 1), (1, 5), (3, 3), (4, 0), (5, 6), (6, 2))


def red_cell_quarters(fields, first_only: bool = False, turned: bool = False) -> list[np.ndarray]:
    """Each field's quarters (320 x 240) at least 20 px from any WBC: red cells only (the
    first per field with ``first_only``; each followed by its 180-degree turn with ``turned``)."""
    out = []
    for image, lab in fields:
        h, w = lab.shape
        near = cv2.dilate((lab > 0).astype(np.uint8), np.ones((41, 41), np.uint8))
        for y0, x0 in ((0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)):
            if not near[y0:y0 + h // 2, x0:x0 + w // 2].any():
                q = np.ascontiguousarray(image[y0:y0 + h // 2, x0:x0 + w // 2])
                out += [q, np.ascontiguousarray(q[::-1, ::-1])] if turned else [q]
                if first_only:
                    break
    return out


def photo(kind: str, fields) -> tuple[np.ndarray, np.ndarray]:
    """A 4032 x 3024 smear photograph with ~157-px WBCs built from BCCD test fields, and its
    WBC label image: "sparse" (6 fields with WBCs among red cells) or "dense" (all fields)."""
    k = PHOTO_GRID
    if kind == "dense":
        slots = (fields * 2)[:k * k]
    else:
        quarters = red_cell_quarters(fields, turned=True)
        whole = iter(fields)
        slots, q = [], 0
        for r in range(k):
            for c in range(k):
                if (r, c) in SPARSE_SLOTS:
                    slots.append(next(whole))
                    continue
                four = [quarters[(q + i) % len(quarters)] for i in range(4)]
                q += 4
                slots.append((np.vstack([np.hstack(four[:2]), np.hstack(four[2:])]),
                              np.zeros((480, 640), np.int32)))
    image, lab = mosaic(slots, k)
    return (cv2.resize(image, PHOTO, interpolation=cv2.INTER_AREA),
            cv2.resize(lab.astype(np.uint16), PHOTO, interpolation=cv2.INTER_NEAREST).astype(np.int32))


def photo_matches(dets, lab: np.ndarray) -> tuple[int, int, int]:
    """(true positives, false positives, WBCs) at score >= SCORE and mask IoU >= 0.5, each
    IoU on the two boxes' union only (full-size masks of a 12 MP photo are 12 MB each)."""
    n, _, stats, _ = cv2.connectedComponentsWithStats((lab > 0).astype(np.uint8))
    gts = [(x, y, x + w, y + h) for x, y, w, h, a in stats[1:] if a >= 30]
    used, tp = set(), 0
    for d in sorted((d for d in dets if d.score >= SCORE), key=lambda d: -d.score):
        dx0, dy0, dx1, dy1 = d.box
        for g, (gx0, gy0, gx1, gy1) in enumerate(gts):
            x0, y0, x1, y1 = min(dx0, gx0), min(dy0, gy0), max(dx1, gx1), max(dy1, gy1)
            if g in used or dx0 >= gx1 or gx0 >= dx1 or dy0 >= gy1 or gy0 >= dy1:
                continue
            p = _shifted(d, -x0, -y0).full_mask(y1 - y0, x1 - x0)
            q = lab[y0:y1, x0:x1] > 0
            if (p & q).sum() >= 0.5 * (p | q).sum():
                used.add(g)
                tp += 1
                break
    return tp, sum(d.score >= SCORE for d in dets) - tp, len(gts)


def speed_case(case: str, mode: str, threads: int, photo_file: str | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    seg = load(mode)
    if photo_file:  # built by the parent: this process's peak RSS is the segmenter's
        with np.load(photo_file) as z:
            image, lab = z["image"], z["lab"]
    else:
        image, lab = bccd("test", 1)[0]
    seg.segment(image, SCORE)  # warm-up
    repeats = 5 if case == "640x480" else 2
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        dets = seg.segment(image, SCORE)
    seconds = (time.perf_counter() - t0) / repeats
    # CPU seconds (all threads): what the case costs when the machine is shared; with
    # --threads 1 it is the idle single-thread wall time.
    cpu = (time.process_time() - c0) / repeats
    tp, fp, wbcs = photo_matches(dets, lab)
    sc = getattr(seg, "last_scale", None)
    return {"part": "speed", "data": case, "mode": mode, "threads": threads, "seconds": seconds, "cpu_seconds": cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cells": len(dets), "wbcs": wbcs, "recall": tp / max(wbcs, 1),
            "precision": tp / max(tp + fp, 1), "factor": sc.factor if sc else None,
            **{k: v for k, v in getattr(seg, "last_tiles", {}).items()},
            "load_average_1min": os.getloadavg()[0]}


def part_speed(mode: str, threads: int) -> list[dict]:
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("640x480", "4032x3024 sparse", "4032x3024 dense"):
            cmd = [sys.executable, __file__, "--speed-one", case, mode, "--threads", str(threads)]
            if case != "640x480":
                path = os.path.join(tmp, case.split()[-1] + ".npz")
                image, lab = photo(case.split()[-1], bccd("test"))
                np.savez(path, image=image, lab=lab.astype(np.uint16))
                cmd += ["--photo", path]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            emit(row)
    return rows


def calibrate() -> None:
    """The median over BCCD train fields of WBC diameter / red-cell ruler (scale.py)."""
    from cvat_tools.scale import red_cell_diameter

    ratios = []
    for image, lab in bccd("train"):
        sizes = [2 * np.sqrt((lab == i).sum() / np.pi) for i in range(1, lab.max() + 1) if (lab == i).sum() > 200]
        ruler, peaks, _ = red_cell_diameter(image)
        if sizes and ruler and peaks:
            ratios.append(np.median(sizes) / ruler)
    print(f"WBC_PER_RED_CELL = {np.median(ratios):.3f} over {len(ratios)} BCCD train fields "
          f"(IQR {np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f})")


# ---------------------------------------------------------------------------------------------


def load(mode: str):
    from cvat_tools.models.registry import load_segmenter

    seg = load_segmenter(None)
    if hasattr(seg, "set_scale"):
        seg.set_scale(mode)
    return seg


def emit(row: dict) -> None:
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bccd-limit", type=int, default=None,
                    help="zoom sweep on the first N BCCD test fields (mosaics use them all)")
    ap.add_argument("--mosaics", type=int, default=1, help="mosaics per k")
    ap.add_argument("--jtsc-limit", type=int, default=60, help="N JTSC images, evenly spaced")
    ap.add_argument("--pbc-limit", type=int, default=70)
    ap.add_argument("--modes", nargs="+", default=["auto"], choices=["auto", "fixed"])
    ap.add_argument("--parts", nargs="+", default=["zoom", "mosaic", "single", "negatives", "speed"])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--speed-one", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--photo", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.calibrate:
        calibrate()
        return
    if args.speed_one:
        print(json.dumps(speed_case(*args.speed_one, args.threads, args.photo)))
        return
    import torch

    torch.set_num_threads(args.threads)
    all_fields = bccd("test")
    fields = all_fields[:args.bccd_limit]
    singles = jtsc(args.jtsc_limit)
    rows = []
    for mode in args.modes:
        print(f"# mode {mode}", flush=True)
        seg = load(mode)
        for part in args.parts:
            if part == "zoom":
                new = part_zoom(seg, fields, singles)
            elif part == "mosaic":
                new = part_mosaic(seg, all_fields, args.mosaics)
            elif part == "single":
                new = part_single(seg, singles, args.pbc_limit)
            elif part == "negatives":
                new = part_negatives(seg, all_fields[:20])
            elif part == "speed":
                new = part_speed(mode, args.threads)
            else:
                raise SystemExit(f"unknown part {part}")
            rows += [{"mode": mode, **r} for r in new]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
