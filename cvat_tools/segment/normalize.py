"""Colour normalization for the learned segmenter: the slide background made neutral grey.

Labs differ most in the colour cast of the whole slide (BCCD: grey, JTSC: yellow, PBC: cream);
white-balancing every field so its background becomes the same neutral grey removes most of
that difference before the model sees the image (training and inference alike).
"""
from __future__ import annotations

import numpy as np

# BCCD's background (median RGB of the brightest 40% of pixels), a neutral grey.
REFERENCE = np.array([200.0, 203.0, 202.0], dtype=np.float32)
BRIGHT_FRACTION = 0.4
MAX_GAIN = 3.0


def background_colour(image: np.ndarray) -> np.ndarray:
    """Median RGB of the brightest pixels (the slide between the cells)."""
    flat = image.reshape(-1, 3)
    if flat.shape[0] > 250_000:  # a subsample is as good and keeps 12 MP photographs fast
        flat = flat[:: flat.shape[0] // 250_000 + 1]
    brightness = flat.astype(np.int32).sum(1)
    cut = np.percentile(brightness, 100 * (1 - BRIGHT_FRACTION))
    return np.median(flat[brightness >= cut], axis=0).astype(np.float32)


def balance_background(image: np.ndarray) -> np.ndarray:
    """RGB uint8 image with per-channel gains that map its background to REFERENCE."""
    gain = np.clip(REFERENCE / np.maximum(background_colour(image), 1.0), 1 / MAX_GAIN, MAX_GAIN)
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
