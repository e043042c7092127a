"""Training-only augmentations of masked cell crops (uint8 RGB, square, grey background).

The thesis set (smear-like backgrounds, brightness, colour variants, contrast, flips, Gaussian
blur, rotations, salt-and-pepper noise, zoom) plus stain/colour jitter in HSV and LAB: the
jitter is what lets a PBC-trained model cope with other labs' stains and cameras.

Colour changes touch only the cell's pixels; the background stays the crop grey unless the
smear-background augmentation replaces it on purpose.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..crops import BACKGROUND
from ..classify.stain import cell_pixels


def _colour_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stain-like shifts: HSV hue/saturation, LAB a/b offsets, brightness and contrast."""
    x = img.astype(np.float32)
    if rng.random() < 0.8:  # HSV: hue shift (OpenCV hue is 0..180) and saturation scale
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-12, 12)) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.5), 0, 255)
        x = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if rng.random() < 0.8:  # LAB: move the stain colour (a: green-red, b: blue-yellow)
        lab = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
        lab[..., 1] += rng.uniform(-15, 15)
        lab[..., 2] += rng.uniform(-20, 20)
        lab[..., 0] *= rng.uniform(0.85, 1.15)
        x = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)
    if rng.random() < 0.5:  # brightness
        x = x + rng.uniform(-30, 30)
    if rng.random() < 0.5:  # contrast
        m = x.mean()
        x = (x - m) * rng.uniform(0.7, 1.3) + m
    if rng.random() < 0.3:  # per-channel gain: a different camera's white balance
        x = x * rng.uniform(0.85, 1.15, size=3)
    return np.clip(x, 0, 255).astype(np.uint8)


def _geometry(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips, rotation by any angle and zoom, filling with the crop grey."""
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1]
    img = np.rot90(img, int(rng.integers(4)))
    s = img.shape[0]
    angle = rng.uniform(-180, 180) if rng.random() < 0.5 else 0.0
    zoom = rng.uniform(0.85, 1.15) if rng.random() < 0.5 else 1.0
    if angle or zoom != 1.0:
        m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, zoom)
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (s, s), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND)
    return np.ascontiguousarray(img)


def _smear_background(shape, rng: np.random.Generator) -> np.ndarray:
    """A blurry pale-pink/yellow field with blobs: roughly a smear around the cell."""
    s = shape[0]
    base = np.array([rng.uniform(200, 250), rng.uniform(170, 230), rng.uniform(160, 230)], np.float32)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (s, s)).astype(np.float32), (0, 0), s / 10)
    noise /= np.abs(noise).max() + 1e-6
    field = base[None, None, :] + noise[..., None] * rng.uniform(10, 40)
    return np.clip(field, 0, 255).astype(np.uint8)


def low_resolution(img: np.ndarray, rng: np.random.Generator, smallest: float = 0.35) -> np.ndarray:
    """The same crop as a coarser camera sees it: shrunk to 35-80% and enlarged back.

    PBC cells are ~130 px across; JTSC's ~80 px and BCCD's JPEG fields are blurrier. Without
    this, a PBC-trained model reads "few pixels across" as "platelet" (the only PBC class that
    is always enlarged to fill the crop)."""
    s = img.shape[0]
    small = max(8, round(s * rng.uniform(smallest, 0.8)))
    img = cv2.resize(np.ascontiguousarray(img), (small, small), interpolation=cv2.INTER_AREA)
    return cv2.resize(img, (s, s), interpolation=cv2.INTER_LINEAR)


def stain_randomization(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A far larger colour change than :func:`_colour_jitter`: another lab's stain and camera.

    Other labs' cells are not PBC's purple: BCCD's are pale blue, JTSC's nuclei red-violet in
    yellow cytoplasm (see benchmarks/cross_domain.py). Hue turned by up to +-60 degrees,
    saturation 0.35-1.6x, per-channel gains 0.7-1.3 (white balance), gamma 0.6-1.6, sometimes
    grey; what is left to learn from is the nucleus shape and texture, which do transfer.
    """
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-30, 30)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.35, 1.6), 0, 255)
    x = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0
    x = np.clip(x * rng.uniform(0.7, 1.3, size=3), 0, 1) ** rng.uniform(0.6, 1.6)
    x = (x * 255).astype(np.uint8)
    if rng.random() < 0.15:
        x = np.repeat(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    return x


def augment(img: np.ndarray, rng: np.random.Generator, low_res: float = 0.0,
            stain_random: float = 0.0) -> np.ndarray:
    """One random training view of a masked crop; ``low_res``: probability of
    :func:`low_resolution`; ``stain_random``: probability of :func:`stain_randomization`
    (instead of the milder jitter)."""
    cell = cell_pixels(img)
    if stain_random and rng.random() < stain_random:
        img = stain_randomization(img, rng)
    else:
        img = _colour_jitter(img, rng)
    img[~cell] = BACKGROUND
    img = _geometry(img, rng)
    if rng.random() < 0.15:  # smear-like background instead of the grey
        bg = ~cell_pixels(img)
        img = img.copy()
        img[bg] = _smear_background(img.shape, rng)[bg]
    if low_res and rng.random() < low_res:
        img = low_resolution(img, rng)
    if rng.random() < 0.2:  # Gaussian blur: focus differences
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 2.0 if stain_random else 1.2))
    if rng.random() < 0.1:  # salt-and-pepper noise
        img = img.copy()
        pick = rng.random(img.shape[:2])
        amount = rng.uniform(0.002, 0.02)
        img[pick < amount / 2] = 0
        img[pick > 1 - amount / 2] = 255
    return img


def augment_batch(batch: np.ndarray, rng: np.random.Generator, low_res: float = 0.0,
                  stain_random: float = 0.0) -> np.ndarray:
    return np.stack([augment(b.copy(), rng, low_res, stain_random) for b in batch])
