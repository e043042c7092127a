"""A portable pack of a prepared classifier split: train on another machine without the raw data.

A GPU box may not hold ``../shared/data`` (and PBC is 170 MB of JPEGs). The pack keeps what
training reads, after the checks, the dedupe and the seeded split were done here:

* train and val crops, WebP-compressed (about 3-4 KB a 160-px crop), with each crop's cell mask
  so the exact grey background (what ``stain.cell_pixels`` and the augmentations look for) is
  restored after decoding;
* the test split's file list and labels only: its pixels stay behind, and the bundle trained
  from a pack is scored on the test split where the data is (``cvat-tools evaluate classifier``).

Lossy compression is a small change next to the training augmentations (mean absolute error
about 2-3 grey levels of 255); validation crops are stored at a higher quality than training ones.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..classify.stain import cell_pixels
from ..crops import BACKGROUND
from ..errors import InputError
from . import cells as D

PACK_VERSION = 1
QUALITY = {"train": 80, "val": 90}


def _encode(images: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    blobs, masks = [], []
    for img in images:
        ok, buf = cv2.imencode(".webp", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise InputError("could not WebP-encode a crop (OpenCV built without WebP?)")
        blobs.append(buf.ravel())
        masks.append(np.packbits(cell_pixels(img).ravel()))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    data = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
    return data, offsets, np.stack(masks) if masks else np.zeros((0, 0), np.uint8)


def _decode(data: np.ndarray, offsets: np.ndarray, masks: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(offsets) - 1, size, size, 3), np.uint8)
    for i in range(len(out)):
        img = cv2.imdecode(data[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
        if img is None or img.shape[:2] != (size, size):
            raise InputError(f"pack: crop {i} does not decode to {size}x{size}; the pack is damaged")
        img = img[..., ::-1].copy()
        cell = np.unpackbits(masks[i])[:size * size].reshape(size, size).astype(bool)
        img[~cell] = BACKGROUND
        grey = cell & np.all(img == np.asarray(BACKGROUND, np.uint8), axis=-1)
        img[grey, 0] += 1  # a cell pixel decoded to the exact background grey stays a cell pixel
        out[i] = img
    return out


def write_pack(path: Path, data, size: int, seed: int, fractions) -> Path:
    """Write a PreparedData (see classification.prepare_data) as a pack, atomically. The crops
    are stored as cut (no stain normalization): the run that reads the pack fits its own."""
    from ..atomic import atomic_path

    if data.stain.method != "none":
        raise InputError("a pack holds the crops as cut; make it with --stain none (the training run "
                         "that reads it may use --stain reinhard or macenko)")

    arrays: dict[str, np.ndarray] = {}
    manifest = D.split_to_manifest(data.split, data.root)
    for name in ("train", "val"):
        cache = data.crops[name]
        blob, offsets, masks = _encode(cache.images, QUALITY[name])
        arrays[f"{name}_data"], arrays[f"{name}_offsets"], arrays[f"{name}_masks"] = blob, offsets, masks
    meta = {
        "version": PACK_VERSION, "size": size, "seed": seed, "fractions": list(fractions),
        "labels": data.labels, "root": str(data.root), "files": manifest, "info": data.info,
        "quality": QUALITY,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return Path(path)


def _open(path: Path) -> tuple[dict, np.lib.npyio.NpzFile]:
    try:
        npz = np.load(path, allow_pickle=False)
        meta = json.loads(str(npz["meta"]))
    except Exception as exc:
        raise InputError(f"{path}: not a classifier pack ({exc}); make one with --pack-to") from None
    if meta.get("version") != PACK_VERSION:
        raise InputError(f"{path}: pack version {meta.get('version')}, this code reads {PACK_VERSION}")
    return meta, npz


def read_meta(path: Path) -> dict:
    """The pack's size, seed, labels and split file lists, without decoding a crop."""
    return _open(Path(path))[0]


def read_pack(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, {"train": crops, "val": crops}) with the exact crop background restored."""
    path = Path(path)
    meta, npz = _open(path)
    size = int(meta["size"])
    images = {name: _decode(npz[f"{name}_data"], npz[f"{name}_offsets"], npz[f"{name}_masks"], size)
              for name in ("train", "val")}
    return meta, images
