"""Instance-segmentation data: readers (COCO export, BCCD, JTSC), augmentation, torch Dataset.

Every reader gives a list of :class:`SegSample`: an image path and a function returning its
full-image bool masks, one per WBC. Masks are read lazily so a folder of thousands of images
costs nothing until used.
"""
from __future__ import annotations

import csv
import random
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
from ..segment.normalize import balance_background

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


def pbc_pseudo_samples(root: str | Path, seed: int = 0) -> list[SegSample]:
    """PBC images of WBC classes from the classifier's *train* split (same dedupe, seed and
    fractions), with pseudo-label masks; images whose mask is not trustworthy load no mask
    and are skipped by the mosaic builder."""
    from .classification_data import dedupe, pbc_samples, stratified_split

    kept, _ = dedupe(pbc_samples(root))
    train = [s for s in stratified_split(kept, seed=seed)["train"] if s.label in PSEUDO_LABEL_CLASSES]

    def masks(path: Path) -> list[np.ndarray]:
        mask = pseudo_label_mask(load_image(path))
        return [] if mask is None else [mask]

    return [SegSample(s.path, (lambda p=s.path: masks(p)), s.path.name) for s in train]


def read_samples(folder: str | Path, split: str | None = None) -> list[SegSample]:
    fmt = detect_format(folder)
    if fmt == "coco":
        if split is not None:
            raise InputError(f"{folder}: a COCO export has no splits; drop --split")
        return read_coco(folder)
    return read_index(folder, split)


# ---------------------------------------------------------------------------------------------
# augmentation (image and masks together)


def hsv_jitter(image: np.ndarray, rng: random.Random, hue: float = 8, sat: float = 0.3, val: float = 0.2) -> np.ndarray:
    """Stain/colour jitter: hue shift (OpenCV units, 180 = full turn), saturation and value gain."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-hue, hue)) % 180
    hsv[..., 1] *= rng.uniform(1 - sat, 1 + sat)
    hsv[..., 2] *= rng.uniform(1 - val, 1 + val)
    return cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)


def channel_cast(image: np.ndarray, rng: random.Random, strength: float = 0.25) -> np.ndarray:
    """Another lab's colour cast: independent gains per RGB channel (a yellow or blue slide)."""
    gains = np.array([rng.uniform(1 - strength, 1 + strength) for _ in range(3)], dtype=np.float32)
    return np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, masks: np.ndarray, rng: random.Random, crop: int,
            balance: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Random crop (at most crop x crop), flips, 90-degree rotations, colour jitter (HSV and a
    per-channel cast), blur; then the background white balance when the model uses it, as at
    inference. ``masks`` is N x H x W uint8."""
    h, w = image.shape[:2]
    if h > crop or w > crop:
        y0, x0 = rng.randint(0, max(h - crop, 0)), rng.randint(0, max(w - crop, 0))
        image, masks = image[y0:y0 + crop, x0:x0 + crop], masks[:, y0:y0 + crop, x0:x0 + crop]
    if rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    if rng.random() < 0.5:
        image, masks = image[::-1], masks[:, ::-1]
    k = rng.randrange(4)
    if k:
        image, masks = np.rot90(image, k), np.rot90(masks, k, axes=(1, 2))
    image = np.ascontiguousarray(image)
    if rng.random() < 0.8:
        image = hsv_jitter(image, rng)
    if rng.random() < 0.5:
        image = channel_cast(image, rng)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    if balance:
        image = balance_background(image)
    return image, np.ascontiguousarray(masks)


def resize_sample(image: np.ndarray, masks: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, size, interpolation=interp)
    if len(masks):
        masks = np.stack([cv2.resize(m, size, interpolation=cv2.INTER_LINEAR) for m in masks])
    else:
        masks = np.zeros((0, size[1], size[0]), dtype=np.uint8)
    return image, masks


def mosaic(pool: list[SegSample], rng: random.Random, tries: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A 2x2 field of four single-cell images with a trusted mask (image, N x H x W uint8).

    Single-cell images alone would teach "one big cell in the middle"; four side by side look
    like a field with several cells, at the cells' true size."""
    tiles: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(4 * tries):
        sample = pool[rng.randrange(len(pool))]
        masks = sample.load_masks()
        if masks:
            tiles.append((load_image(sample.image), masks[0]))
            if len(tiles) == 4:
                break
    if len(tiles) < 4:
        raise InputError("pseudo-label pool: too few images with a trusted mask to build a mosaic")
    th = max(t[0].shape[0] for t in tiles)
    tw = max(t[0].shape[1] for t in tiles)
    canvas = np.empty((2 * th, 2 * tw, 3), dtype=np.uint8)
    canvas[:] = np.median(tiles[0][0].reshape(-1, 3), axis=0).astype(np.uint8)
    masks = np.zeros((4, 2 * th, 2 * tw), dtype=np.uint8)
    for k, (image, mask) in enumerate(tiles):
        y0, x0 = (k // 2) * th, (k % 2) * tw
        h, w = image.shape[:2]
        canvas[y0:y0 + h, x0:x0 + w] = image
        masks[k, y0:y0 + h, x0:x0 + w] = mask
    return canvas, masks


class InstanceDataset:
    """torch-style dataset of (image tensor 3xHxW in [0,1], target dict) for MaskRCNN.

    Each image is rescaled so its long side is ``long_side`` (times a random factor in
    ``scale_range`` when training), then augmented and cropped to ``long_side`` square.
    With a ``mosaic_pool`` (pseudo-labelled single-cell images), ``mosaics`` extra items per
    epoch are 2x2 mosaics of them, rescaled like a 640-px field so cells keep their size."""

    def __init__(self, samples: list[SegSample], long_side: int, train: bool,
                 scale_range: tuple[float, float] = (0.75, 1.33), seed: int = 0, min_area: int = 30,
                 balance: bool = False, mosaic_pool: list[SegSample] | None = None, mosaics: int = 0):
        self.samples = samples
        self.balance = balance
        self.long_side = long_side
        self.train = train
        self.scale_range = scale_range
        self.rng = random.Random(seed)
        self.min_area = min_area
        self.mosaic_pool = mosaic_pool or []
        self.mosaics = mosaics if self.mosaic_pool else 0

    def __len__(self) -> int:
        return len(self.samples) + self.mosaics

    def __getitem__(self, index: int):
        import torch

        if index >= len(self.samples):
            image, masks = mosaic(self.mosaic_pool, self.rng)
            scale = self.long_side / FIELD_LONG_SIDE
        else:
            sample = self.samples[index]
            image = load_image(sample.image)
            full = sample.load_masks()
            masks = np.stack(full).astype(np.uint8) if full else np.zeros((0, *image.shape[:2]), np.uint8)
            scale = self.long_side / max(image.shape[:2])
        if self.train:
            scale *= self.rng.uniform(*self.scale_range)
        image, masks = resize_sample(image, masks, scale)
        if self.train:
            image, masks = augment(image, masks, self.rng, self.long_side, self.balance)
        elif self.balance:
            image = balance_background(image)
        keep = masks.reshape(len(masks), -1).sum(1) >= self.min_area if len(masks) else np.zeros(0, bool)
        masks = masks[keep]
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(masks), dtype=torch.int64),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
        }
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        return tensor, target


def collate(batch):
    return tuple(zip(*batch))
