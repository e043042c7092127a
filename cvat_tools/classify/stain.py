"""Stain normalization of masked cell crops: the same transform at training and inference.

Different labs stain and photograph differently (PBC: CellaVision, May-Grünwald-Giemsa;
BCCD: a phone-grade camera; JTSC: rapid stain on a yellow background). Two methods, each
fitted on the training crops (the reference) and applied to every crop, training and inference
(plus "grey", the ablation with no colour at all: each cell reduced to its luminance):

- Reinhard (2001): each crop's LAB mean and standard deviation moved to the reference's.
- Macenko (2009): each crop's two stain colours (optical-density vectors, found from the
  extreme angles of its pixels in the plane of their two main directions) and their
  concentrations (99th percentile) replaced by the reference's; the stains' amounts per pixel
  are kept. Made for H&E; a Romanowsky smear also has two dyes (azure-methylene blue, eosin).

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

METHODS = ("none", "reinhard", "macenko", "grey")
# Macenko: light source intensity, OD norm below which a pixel counts as unstained, angle percentile
IO = 255.0
OD_MIN = 0.15
ALPHA = 1.0
MIN_PIXELS = 50  # fewer stained cell pixels than this: the crop is left as it is


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


def grey(crop: np.ndarray) -> np.ndarray:
    """The cell's luminance in all three channels; background unchanged. No colour left to
    differ between labs: what stays is the nucleus shape, granule texture and density."""
    where = cell_pixels(crop)
    out = crop.copy()
    lum = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    out[where] = lum[where][:, None]
    return out


def reference_stats(crops) -> tuple[list[float], list[float]]:
    """The reference: mean over crops of each crop's cell LAB mean and std."""
    means, stds = zip(*(lab_stats(c) for c in crops))
    return np.mean(means, axis=0).tolist(), np.mean(stds, axis=0).tolist()


def optical_density(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) -> optical density -log(I / Io) per channel (0 for white)."""
    return np.maximum(-np.log((pixels.astype(np.float64) + 1.0) / IO), 0.0)


def macenko_stains(crop: np.ndarray, where: np.ndarray | None = None):
    """(stain matrix 3x2, unit columns, haematoxylin-like first; 99th-percentile concentrations
    of both) of the crop's stained cell pixels, or None when too few pixels or no spread."""
    where = cell_pixels(crop) if where is None else where
    return _stains_from_density(optical_density(crop[where]))


def _stains_from_density(od: np.ndarray):
    """macenko_stains on the optical densities (N x 3) of a crop's cell pixels."""
    # total absorbance, not every channel: a pure counterstain pixel barely absorbs red
    od = od[np.linalg.norm(od, axis=1) > OD_MIN]
    if len(od) < MIN_PIXELS:
        return None
    _, vectors = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vectors[:, 1:3]  # the two largest eigenvalues' directions
    plane = plane * np.where(plane[0] < 0, -1.0, 1.0)  # both pointing into positive OD
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(angles, ALPHA), np.percentile(angles, 100 - ALPHA)
    if hi - lo < 1e-3:
        return None
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    # haematoxylin / azure absorbs red most: the vector with the larger red OD goes first
    stains = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1], axis=1)
    stains = stains / np.linalg.norm(stains, axis=0, keepdims=True)
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    max_conc = np.percentile(conc, 99, axis=1)
    if np.any(max_conc <= 1e-6) or not np.all(np.isfinite(stains)):
        return None
    return stains, max_conc


def macenko(crop: np.ndarray, ref_stains, ref_max_conc) -> np.ndarray:
    """Crop with its cell's stain vectors and concentration range moved to the reference's;
    background and crops without a usable stain estimate unchanged."""
    where = cell_pixels(crop)
    od = optical_density(crop[where])
    found = _stains_from_density(od) if where.any() else None
    if found is None:
        return crop
    stains, max_conc = found
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0].clip(min=0.0)
    conc *= (np.asarray(ref_max_conc, np.float64) / max_conc)[:, None]
    rgb = IO * np.exp(-np.asarray(ref_stains, np.float64) @ conc) - 1.0
    out = crop.copy()
    out[where] = np.clip(rgb.T + 0.5, 0, 255).astype(np.uint8)
    # a cell pixel must not turn into the exact background grey (it would leave the cell)
    grey = where & ~cell_pixels(out)
    out[grey, 0] = out[grey, 0] + 1
    return out


def macenko_reference(crops) -> tuple[list[list[float]], list[float]]:
    """The reference: median over crops of each crop's stain vectors and concentrations."""
    found = [f for f in (macenko_stains(c) for c in crops) if f is not None]
    if not found:
        raise BundleError("macenko: no reference crop has enough stained pixels")
    stains = np.median(np.stack([f[0] for f in found]), axis=0)
    stains = stains / np.linalg.norm(stains, axis=0, keepdims=True)
    max_conc = np.median(np.stack([f[1] for f in found]), axis=0)
    return stains.tolist(), max_conc.tolist()


@dataclass
class StainNormalizer:
    method: str = "none"
    mean: list[float] | None = None  # reinhard: reference LAB mean and std
    std: list[float] | None = None
    stains: list[list[float]] | None = None  # macenko: reference stain matrix (3x2), concentrations
    max_conc: list[float] | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise BundleError(f"unknown stain normalization {self.method!r}; use one of {METHODS}")
        if self.method == "reinhard" and (self.mean is None or self.std is None):
            raise BundleError("reinhard stain normalization needs the reference LAB mean and std")
        if self.method == "macenko":
            if self.stains is None or self.max_conc is None:
                raise BundleError("macenko stain normalization needs the reference stain matrix and concentrations")
            try:
                stains = np.asarray(self.stains, dtype=np.float64)
                conc = np.asarray(self.max_conc, dtype=np.float64)
            except (TypeError, ValueError):
                stains = conc = np.zeros(0)
            if (stains.shape != (3, 2) or conc.shape != (2,) or not np.all(np.isfinite(stains))
                    or not np.all(np.isfinite(conc)) or np.any(conc <= 0)):
                raise BundleError("macenko reference: expected a finite 3x2 stain matrix and two positive "
                                  "concentrations")

    @classmethod
    def fit(cls, method: str, crops) -> "StainNormalizer":
        if method not in METHODS:
            raise BundleError(f"unknown stain normalization {method!r}; use one of {METHODS}")
        if method in ("none", "grey"):
            return cls(method)
        if method == "macenko":
            stains, max_conc = macenko_reference(crops)
            return cls(method, stains=stains, max_conc=max_conc)
        mean, std = reference_stats(crops)
        return cls(method, mean, std)

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        if self.method == "reinhard":
            return reinhard(crop, self.mean, self.std)
        if self.method == "macenko":
            return macenko(crop, self.stains, self.max_conc)
        if self.method == "grey":
            return grey(crop)
        return crop

    def after_augmentation(self, batch: np.ndarray) -> np.ndarray:
        """Training batches, once augmented: colour jitter must not put back the colour that
        "grey" took out (the model would learn from colour it never sees at inference)."""
        if self.method != "grey":
            return batch
        return np.stack([grey(c) for c in batch])

    def to_manifest(self) -> dict:
        entry = {"method": self.method, "reference_lab_mean": self.mean, "reference_lab_std": self.std}
        if self.method == "macenko":
            entry.update(reference_stain_matrix=self.stains, reference_max_concentration=self.max_conc)
        return entry

    @classmethod
    def from_manifest(cls, entry: dict | None) -> "StainNormalizer":
        entry = entry or {}
        return cls(entry.get("method", "none"), entry.get("reference_lab_mean"), entry.get("reference_lab_std"),
                   entry.get("reference_stain_matrix"), entry.get("reference_max_concentration"))
