"""Stain normalization of masked cell crops: the same transform at training and inference.

Different labs stain and photograph differently (PBC: CellaVision, May-Grünwald-Giemsa;
BCCD: a phone-grade camera; JTSC: rapid stain on a yellow background). Reinhard's method
moves each crop's LAB mean and standard deviation to those of a reference (the training
set's), so colour differences between labs shrink before the network sees the cell.

Only the cell's pixels count: the crop background (crops.BACKGROUND grey) is excluded from the
statistics and left untouched. A model's bundle manifest records the normalization it was
trained with (``StainNormalizer.to_manifest``); predict() rebuilds it from there.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..crops import BACKGROUND
from ..errors import BundleError

METHODS = ("none", "reinhard")


def cell_pixels(crop: np.ndarray) -> np.ndarray:
    """Bool mask of the pixels that are not the exact crop background."""
    return np.any(crop != np.asarray(BACKGROUND, dtype=crop.dtype), axis=-1)


def lab_stats(crop: np.ndarray, where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per LAB channel (OpenCV float LAB: L 0..100, a/b about -127..127)."""
    lab = cv2.cvtColor(crop.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    where = cell_pixels(crop) if where is None else where
    pixels = lab[where] if where.any() else lab.reshape(-1, 3)
    return pixels.mean(axis=0), pixels.std(axis=0) + 1e-6


def reinhard(crop: np.ndarray, ref_mean, ref_std) -> np.ndarray:
    """Crop with its cell's LAB mean/std moved to (ref_mean, ref_std); background unchanged."""
    where = cell_pixels(crop)
    if not where.any():
        return crop
    lab = cv2.cvtColor(crop.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    mean, std = lab_stats(crop, where)
    lab = (lab - mean) / std * np.asarray(ref_std, np.float32) + np.asarray(ref_mean, np.float32)
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    out = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out[~where] = BACKGROUND
    return out


def reference_stats(crops) -> tuple[list[float], list[float]]:
    """The reference: mean over crops of each crop's cell LAB mean and std."""
    means, stds = zip(*(lab_stats(c) for c in crops))
    return np.mean(means, axis=0).tolist(), np.mean(stds, axis=0).tolist()


@dataclass
class StainNormalizer:
    method: str = "none"
    mean: list[float] | None = None
    std: list[float] | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise BundleError(f"unknown stain normalization {self.method!r}; use one of {METHODS}")
        if self.method == "reinhard" and (self.mean is None or self.std is None):
            raise BundleError("reinhard stain normalization needs the reference LAB mean and std")

    @classmethod
    def fit(cls, method: str, crops) -> "StainNormalizer":
        if method == "none":
            return cls("none")
        mean, std = reference_stats(crops)
        return cls(method, mean, std)

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        if self.method == "reinhard":
            return reinhard(crop, self.mean, self.std)
        return crop

    def to_manifest(self) -> dict:
        return {"method": self.method, "reference_lab_mean": self.mean, "reference_lab_std": self.std}

    @classmethod
    def from_manifest(cls, entry: dict | None) -> "StainNormalizer":
        entry = entry or {}
        return cls(entry.get("method", "none"), entry.get("reference_lab_mean"), entry.get("reference_lab_std"))
