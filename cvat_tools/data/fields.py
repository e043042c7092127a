"""Instance-segmentation data sets: COCO exports, BCCD, JTSC and PBC pseudo-labels.

Every reader gives a list of :class:`SegSample`: an image path and a function returning its
full-image bool masks, one per WBC. Masks are read lazily so a folder of thousands of images
costs nothing until used.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .. import labels as L
from ..errors import InputError
from ..formats.masks import coco_rle_decode, polygon_to_mask
from ..formats.safe_names import join_inside, safe_relative
from ..guarded import load_json
from ..imaging import MAX_PIXELS, load_image

# Working scale of a field: the long side a 640x480 BCCD field has before the model's rescale.
# PBC single-cell images (360x363) show cells at the same size as BCCD fields (median WBC
# ~130 px across in both), so a pseudo-labelled PBC image is rescaled like a BCCD field.
FIELD_LONG_SIDE = 640

# One BCCD/JTSC mask component smaller than this (px at the file's size) is noise, not a cell.
MIN_CELL_AREA = 200


@dataclass
class SegSample:
    image: Path
    load_masks: Callable[[], list[np.ndarray]]
    name: str = ""


# ---------------------------------------------------------------------------------------------
# readers


def masks_from_label_png(path: Path, min_area: int = MIN_CELL_AREA) -> list[np.ndarray]:
    """BCCD/JTSC mask PNG (0 background, 128 cytoplasm, 255 nucleus): one bool mask per
    connected component of mask > 0 above ``min_area``."""
    label = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if label is None:
        raise InputError(f"{path}: unreadable mask PNG")
    n, cc, stats, _ = cv2.connectedComponentsWithStats((label > 0).astype(np.uint8), connectivity=8)
    return [cc == i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]


def detect_format(folder: str | Path) -> str:
    """'coco' (annotations.json + images/), 'bccd' (index.csv with a split column) or
    'jtsc' (index.csv with image and mask columns, no split)."""
    folder = Path(folder)
    if (folder / "annotations.json").is_file():
        return "coco"
    index = folder / "index.csv"
    if index.is_file():
        with open(index, newline="") as fh:
            columns = next(csv.reader(fh), [])
        if {"image", "mask"} <= set(columns):
            return "bccd" if "split" in columns else "jtsc"
    raise InputError(
        f"{folder}: not a segmentation data folder; expected a 'cvat-tools export' COCO folder "
        "(annotations.json + images/) or a BCCD/JTSC folder (index.csv with image,mask columns)"
    )


def read_index(folder: str | Path, split: str | None = None) -> list[SegSample]:
    """BCCD/JTSC-style folder: index.csv rows (optionally one split)."""
    folder = Path(folder)
    with open(folder / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if split is not None:
        if rows and "split" not in rows[0]:
            raise InputError(f"{folder}/index.csv has no split column; drop --split")
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise InputError(f"{folder}/index.csv: no rows with split {split!r}")
    return [
        SegSample(folder / r["image"], (lambda p=folder / r["mask"]: masks_from_label_png(p)), r["image"])
        for r in rows
    ]


def _coco_masks(anns: list[dict], height: int, width: int) -> list[np.ndarray]:
    out = []
    for ann in anns:
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            m = coco_rle_decode(seg).astype(bool)
        elif isinstance(seg, list) and seg:
            m = np.zeros((height, width), dtype=bool)
            for poly in seg:
                m |= polygon_to_mask(np.asarray(poly, float).reshape(-1, 2), height, width)
        else:
            continue
        if m.any():
            out.append(m)
    return out


def read_coco(folder: str | Path, label: str | None = None) -> list[SegSample]:
    """A COCO instances folder written by ``cvat-tools export``: every annotation with a
    segmentation is a cell (optionally only those whose category name is ``label``)."""
    folder = Path(folder)
    path = folder / "annotations.json"
    coco = load_json(path)
    try:
        cats = {c["id"]: c["name"] for c in coco.get("categories", [])}
        by_image: dict[int, list[dict]] = {}
        for ann in coco.get("annotations", []):
            if label is None or cats.get(ann.get("category_id")) == label:
                by_image.setdefault(ann["image_id"], []).append(ann)
        samples = []
        for im in coco["images"]:
            anns = by_image.get(im["id"], [])
            h, w = int(im["height"]), int(im["width"])
            if not (0 < h and 0 < w and h * w <= MAX_PIXELS):  # masks are allocated at this size
                raise InputError(f"{path}: image {str(im.get('file_name'))[:80]!r} size {w}x{h} is "
                                 f"not positive or over the {MAX_PIXELS // 10**6} MP limit")
            # names from the file never lead outside the folder
            image_path = join_inside(folder / "images", str(im["file_name"]))
            if not image_path.is_file():
                image_path = join_inside(folder, str(im["file_name"]))
            samples.append(SegSample(image_path, (lambda a=anns, h=h, w=w: _coco_masks(a, h, w)),
                                     safe_relative(str(im["file_name"])).as_posix()))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: not a COCO instances file ({str(exc)[:200]})") from None
    return samples


# ---------------------------------------------------------------------------------------------
# PBC pseudo-labels: single-cell images with the classical segmenter's centre-cell mask

# WBC classes only: erythroblasts and platelets are not what the segmenter is asked to find.
PSEUDO_LABEL_CLASSES = tuple(c for c in L.PBC_FINE_CLASSES if c not in L.EXTRA_CLASSES)
# A classical mask that took a touching red cell along is concave; a WBC outline is not.
MIN_SOLIDITY = 0.9


def pseudo_label_mask(image: np.ndarray) -> np.ndarray | None:
    """The classical centre-cell mask when it is trustworthy as a training label: found, off
    the image border, convex enough (no red cell glued on); else None."""
    from ..segment.classical import centre_cell_mask

    mask = centre_cell_mask(image)
    if mask is None or mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        return None
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=cv2.contourArea)
    hull = cv2.contourArea(cv2.convexHull(contour))
    if hull <= 0 or cv2.contourArea(contour) / hull < MIN_SOLIDITY:
        return None
    return mask


def _pbc_train_split(root: str | Path, seed: int = 0):
    """The classifier's PBC train split (same dedupe, seed and fractions)."""
    from .cells import dedupe, pbc_samples, stratified_split

    kept, _ = dedupe(pbc_samples(root))
    return stratified_split(kept, seed=seed)["train"]


def pbc_pseudo_samples(root: str | Path, seed: int = 0) -> list[SegSample]:
    """PBC images of WBC classes from the classifier's *train* split (same dedupe, seed and
    fractions), with pseudo-label masks; images whose mask is not trustworthy load no mask
    and are skipped by the mosaic builder."""
    train = [s for s in _pbc_train_split(root, seed) if s.label in PSEUDO_LABEL_CLASSES]

    def masks(path: Path) -> list[np.ndarray]:
        mask = pseudo_label_mask(load_image(path))
        return [] if mask is None else [mask]

    return [SegSample(s.path, (lambda p=s.path: masks(p)), s.path.name) for s in train]


def pbc_platelet_samples(root: str | Path, seed: int = 0) -> list[SegSample]:
    """PBC platelet images of the classifier's *train* split: red cells and platelets, no WBC
    (hard negatives: no target)."""
    return [SegSample(s.path, (lambda: []), s.path.name)
            for s in _pbc_train_split(root, seed) if s.label == "platelet"]


def read_samples(folder: str | Path, split: str | None = None) -> list[SegSample]:
    fmt = detect_format(folder)
    if fmt == "coco":
        if split is not None:
            raise InputError(f"{folder}: a COCO export has no splits; drop --split")
        return read_coco(folder)
    return read_index(folder, split)
