"""Training side of the segmenter's data: augmentation of images and masks together, the torch
Dataset and its collate. The data sets themselves are read by :mod:`cvat_tools.data.fields`.
"""
from __future__ import annotations

import math
import random
from typing import Callable

import cv2
import numpy as np

from ..data.fields import FIELD_LONG_SIDE, SegSample
from ..errors import InputError
from ..imaging import load_image
from ..segment.normalize import balance_background


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
            balance: bool = False, gray: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Random crop (at most crop x crop), flips, 90-degree rotations, colour jitter (HSV and a
    per-channel cast), blur, a grey copy with probability ``gray`` (targets kept: grey input
    still has its cells); then the background white balance when the model uses it, as at
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
    if gray and rng.random() < gray:
        image = np.ascontiguousarray(np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2))
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


# ---------------------------------------------------------------------------------------------
# scale: zoomed views, wide fields, zoomed-in single cells, hard negatives


def log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _empty_masks(h: int, w: int) -> np.ndarray:
    return np.zeros((0, h, w), dtype=np.uint8)


def _start(rng: random.Random, length: float, window: float, centre: float | None, margin: float) -> int:
    """Window start in [0, length - window], containing ``centre`` (with ``margin``) if given."""
    hi = max(length - window, 0.0)
    lo_c, hi_c = 0.0, hi
    if centre is not None:
        lo_c, hi_c = max(0.0, centre + margin - window), min(hi, centre - margin)
        if lo_c > hi_c:
            lo_c = hi_c = min(max(centre - window / 2, 0.0), hi)
    return int(round(rng.uniform(lo_c, hi_c)))


def zoom_window(image: np.ndarray, masks: np.ndarray, scale: float, size: int, rng: random.Random,
                centre: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """At most size x size of ``image`` resampled by ``scale``, cut in source pixels *before*
    resizing (a 4x zoom never resizes the whole field), optionally around ``centre`` (x, y in
    source pixels). Masks are cut and resized with the image, so they stay registered."""
    h, w = image.shape[:2]
    src = size / scale
    cw, ch = min(w, int(math.ceil(src))), min(h, int(math.ceil(src)))
    cx, cy = (None, None) if centre is None else centre
    margin = min(src / 8, 16 / scale)
    x0 = _start(rng, w, cw, cx, margin)
    y0 = _start(rng, h, ch, cy, margin)
    image, masks = image[y0:y0 + ch, x0:x0 + cw], masks[:, y0:y0 + ch, x0:x0 + cw]
    image, masks = resize_sample(np.ascontiguousarray(image), np.ascontiguousarray(masks), scale)
    return image[:size, :size], masks[:, :size, :size]


def tile_fields(first: tuple[np.ndarray, np.ndarray], load_other: Callable[[], tuple[np.ndarray, np.ndarray]],
                scale: float, size: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """A wide field: fields resampled by ``scale`` (too small to fill the window alone) tiled
    side by side, with a random offset, over a size x size canvas; each field's cells keep
    their own masks (cut at the canvas border like a real field's)."""
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = np.median(first[0].reshape(-1, 3), axis=0).astype(np.uint8)
    out: list[np.ndarray] = []
    tile, y = first, None
    th = tw = None
    while True:
        image, masks = resize_sample(*tile, scale)
        if th is None:
            th, tw = image.shape[:2]
            y0, x0 = -rng.randrange(th), -rng.randrange(tw)
            y, x = y0, x0
        if rng.random() < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        if rng.random() < 0.5:
            image, masks = image[::-1], masks[:, ::-1]
        h, w = min(image.shape[0], th), min(image.shape[1], tw)
        ys, xs = max(y, 0), max(x, 0)
        ye, xe = min(y + h, size), min(x + w, size)
        if ye > ys and xe > xs:
            canvas[ys:ye, xs:xe] = image[ys - y:ye - y, xs - x:xe - x]
            for m in masks:
                full = np.zeros((size, size), dtype=np.uint8)
                full[ys:ye, xs:xe] = m[ys - y:ye - y, xs - x:xe - x]
                if full.any():
                    out.append(full)
        x += tw
        if x >= size:
            x, y = x0, y + th
            if y >= size:
                break
        tile = load_other()
    return canvas, (np.stack(out) if out else _empty_masks(size, size))


def zoomed_cell(pool: list[SegSample], rng: random.Random, size: int, fill: tuple[float, float] = (0.45, 0.95),
                tries: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A single-cell image zoomed so the cell fills ``fill`` of the frame (one cell, one mask:
    a lobed neutrophil filling the frame is still one cell)."""
    for _ in range(tries):
        sample = pool[rng.randrange(len(pool))]
        masks = sample.load_masks()
        if masks:
            break
    else:
        raise InputError("pseudo-label pool: too few images with a trusted mask for zoomed cells")
    image, mask = load_image(sample.image), masks[0].astype(np.uint8)
    h, w = image.shape[:2]
    ys, xs = np.nonzero(mask)
    d = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    side = min(int(d / rng.uniform(*fill)), h, w)

    def start(lo: int, hi: int, length: int) -> int:  # the whole cell inside when it fits
        a, b = max(0, hi - side), min(length - side, lo)
        return rng.randint(a, b) if a <= b else min(max((lo + hi - side) // 2, 0), length - side)

    x0, y0 = start(xs.min(), xs.max() + 1, w), start(ys.min(), ys.max() + 1, h)
    crop = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])
    return resize_sample(crop, np.ascontiguousarray(mask[None, y0:y0 + side, x0:x0 + side]), size / side)


def red_cell_window(sample: SegSample, rng: random.Random, size: int, zoom: tuple[float, float] = (1.34, 4.0),
                    tries: int = 30) -> np.ndarray | None:
    """A window of a field with no WBC pixel in it (red cells, platelets, background), at a
    random zoom relative to the canonical field scale; None when none is found."""
    image = load_image(sample.image)
    masks = sample.load_masks()
    h, w = image.shape[:2]
    busy = np.zeros((h, w), dtype=np.uint8)
    for m in masks:
        busy |= m.astype(np.uint8)
    busy = cv2.dilate(busy, np.ones((9, 9), np.uint8))
    integral = cv2.integral(busy)
    base = size / max(h, w)
    for _ in range(tries):
        scale = base * log_uniform(rng, *zoom)
        side = int(math.ceil(size / scale))
        if side > min(h, w):
            continue
        y0, x0 = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
        if integral[y0 + side, x0 + side] - integral[y0, x0 + side] - integral[y0 + side, x0] + integral[y0, x0] == 0:
            crop = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])
            return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return None


def blank_frame(rng: random.Random, size: int) -> np.ndarray:
    """An image with nothing to find: black, white, grey or one colour, noise, smooth blobs,
    a gradient (a camera with the lamp off, an out-of-focus field, a blank slide)."""
    kind = rng.choice(["black", "uniform", "noise", "blobs", "gradient"])
    nrng = np.random.default_rng(rng.randrange(2 ** 31))
    if kind == "black":
        return np.full((size, size, 3), rng.randint(0, 12), dtype=np.uint8)
    colour = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    if rng.random() < 0.5:
        colour[:] = colour[0]
    if kind == "uniform":
        return np.broadcast_to(colour.astype(np.uint8), (size, size, 3)).copy()
    if kind == "noise":
        noise = nrng.normal(0, rng.uniform(5, 80), (size, size, 1 if rng.random() < 0.5 else 3))
        return np.clip(colour + noise, 0, 255).astype(np.uint8)
    if kind == "blobs":
        small = nrng.uniform(0, 255, (rng.randint(3, 24),) * 2 + (3,)).astype(np.float32)
        big = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        return np.clip(big, 0, 255).astype(np.uint8)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    other = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    image = colour * (1 - ramp) + other * ramp
    return np.broadcast_to(image, (size, size, 3)).astype(np.uint8).copy()


def hard_negative(fields: list[SegSample], platelets: list[SegSample], rng: random.Random,
                  size: int) -> np.ndarray:
    """An image with no WBC: half red-cell-only windows of training fields, a fifth PBC
    platelet images (when given), the rest blank / noise frames."""
    r = rng.random()
    if r < 0.5 and fields:
        image = red_cell_window(fields[rng.randrange(len(fields))], rng, size)
        if image is not None:
            return image
    elif r < 0.7 and platelets:
        image = load_image(platelets[rng.randrange(len(platelets))].image)
        scale = size / max(image.shape[:2]) * log_uniform(rng, 0.5, 2.0)
        image, _ = zoom_window(image, _empty_masks(*image.shape[:2]), scale, size, rng)
        ph, pw = size - image.shape[0], size - image.shape[1]
        if ph > 0 or pw > 0:
            image = cv2.copyMakeBorder(image, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT_101)
        return image
    return blank_frame(rng, size)


def val_negatives(fields: list[SegSample], size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """A fixed set of ``count`` no-WBC images for model selection: red-cell-only windows of the
    (validation) ``fields`` and blank frames, alternately."""
    rng = random.Random(seed)
    out: list[np.ndarray] = []
    k = 0
    while len(out) < count and k < 20 * max(count, 1):
        if k % 2 == 0 and fields:
            image = red_cell_window(fields[(k // 2) % len(fields)], rng, size)
        else:
            image = blank_frame(rng, size)
        if image is not None:
            out.append(image)
        k += 1
    return out


class InstanceDataset:
    """torch-style dataset of (image tensor 3xHxW in [0,1], target dict) for MaskRCNN.

    Each image is rescaled so its long side is ``long_side`` (times a random factor in
    ``scale_range`` when training), then augmented and cropped to ``long_side`` square.
    With probability ``zoom_prob`` a training field is instead zoomed by a log-uniform factor in
    ``zoom_range`` of that canonical size: zoomed in, a window of it is cut (around a WBC 3
    times in 4); zoomed out, it is tiled with other training fields into a wide field.
    Extra items per epoch, after the samples: ``mosaics`` 2x2 mosaics of the pseudo-labelled
    single cells of ``mosaic_pool`` (rescaled like a 640-px field so cells keep their size),
    ``zoomed_cells`` of those cells zoomed to fill the frame, and ``negatives`` hard negatives
    with no target (red-cell-only windows of the training fields, ``platelet_pool`` images,
    blank / black / noise frames). ``gray`` is the probability of a grey copy of any item."""

    def __init__(self, samples: list[SegSample], long_side: int, train: bool,
                 scale_range: tuple[float, float] = (0.75, 1.33), seed: int = 0, min_area: int = 30,
                 balance: bool = False, mosaic_pool: list[SegSample] | None = None, mosaics: int = 0,
                 zoom_range: tuple[float, float] = (0.25, 4.0), zoom_prob: float = 0.0,
                 zoomed_cells: int = 0, negatives: int = 0, platelet_pool: list[SegSample] | None = None,
                 gray: float = 0.0):
        self.samples = samples
        self.balance = balance
        self.long_side = long_side
        self.train = train
        self.scale_range = tuple(scale_range)
        self.zoom_range = tuple(zoom_range)
        self.zoom_prob = zoom_prob if train else 0.0
        self.rng = random.Random(seed)
        self.min_area = min_area
        self.mosaic_pool = mosaic_pool or []
        self.mosaics = mosaics if self.mosaic_pool else 0
        self.zoomed_cells = zoomed_cells if self.mosaic_pool else 0
        self.negatives = negatives if train else 0
        self.platelet_pool = platelet_pool or []
        self.gray = gray if train else 0.0

    def __len__(self) -> int:
        return len(self.samples) + self.mosaics + self.zoomed_cells + self.negatives

    def _load(self, sample: SegSample) -> tuple[np.ndarray, np.ndarray]:
        image = load_image(sample.image)
        full = sample.load_masks()
        masks = np.stack(full).astype(np.uint8) if full else _empty_masks(*image.shape[:2])
        return image, masks

    def _field(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, masks = self._load(self.samples[index])
        scale = self.long_side / max(image.shape[:2])
        if not self.train:
            return resize_sample(image, masks, scale)
        if not self.zoom_prob or self.rng.random() >= self.zoom_prob:
            return resize_sample(image, masks, scale * self.rng.uniform(*self.scale_range))
        scale *= log_uniform(self.rng, *self.zoom_range)
        h, w = image.shape[:2]
        if max(h, w) * scale < self.long_side:
            def other():
                return self._load(self.samples[self.rng.randrange(len(self.samples))])
            return tile_fields((image, masks), other, scale, self.long_side, self.rng)
        centre = None
        if len(masks) and self.rng.random() < 0.75:
            ys, xs = np.nonzero(masks[self.rng.randrange(len(masks))])
            if len(xs):
                centre = (float(xs.mean()), float(ys.mean()))
        return zoom_window(image, masks, scale, self.long_side, self.rng, centre)

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image H x W x 3 uint8, masks N x H x W uint8) of item ``index``, augmented."""
        n = len(self.samples)
        if index < n:
            image, masks = self._field(index)
        elif index < n + self.mosaics:
            image, masks = mosaic(self.mosaic_pool, self.rng)
            scale = self.long_side / FIELD_LONG_SIDE
            if self.train:
                scale *= self.rng.uniform(*self.scale_range)
            image, masks = resize_sample(image, masks, scale)
        elif index < n + self.mosaics + self.zoomed_cells:
            image, masks = zoomed_cell(self.mosaic_pool, self.rng, self.long_side)
        else:
            image = hard_negative(self.samples, self.platelet_pool, self.rng, self.long_side)
            masks = _empty_masks(*image.shape[:2])
        if self.train:
            image, masks = augment(image, masks, self.rng, self.long_side, self.balance, self.gray)
        elif self.balance:
            image = balance_background(image)
        keep = masks.reshape(len(masks), -1).sum(1) >= self.min_area if len(masks) else np.zeros(0, bool)
        return image, masks[keep]

    def __getitem__(self, index: int):
        import torch

        image, masks = self.item(index)
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(masks), dtype=torch.int64),
            "masks": torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
        }
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        return tensor, target


def collate(batch):
    return tuple(zip(*batch))
