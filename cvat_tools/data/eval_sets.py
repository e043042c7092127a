"""Held-out evaluation sets for the classifier and the refiner (scored by metrics.classification).

    PBC   -> only the bundle's held-out split (default test), centre-cell crops cut with the
             bundle's own mask source (classical, or the segmenter's centre instance)
    BCCD  -> single-WBC images of a split (default test), crops cut with the given masks
    JTSC  -> every image, crop cut with the given mask
    crops -> DIR/<class>/*.png as given
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..imaging import load_image
from . import cells as D


@dataclass
class EvalSet:
    kind: str  # pbc, bccd, jtsc, crops
    crops: list[np.ndarray]
    truth: list[str]
    names: list[str]
    mask: str | None = None  # PBC: the mask source the crops were cut with


def load_eval_set(data: str | Path, split: str = "test", manifest: dict | None = None,
                  progress: bool = False, mask: str | None = None,
                  limit: int | None = None, seed: int = 0) -> EvalSet:
    """``mask`` (PBC only) overrides the bundle's own mask source; ``limit`` keeps a random
    sample (``seed``) of at most that many crops (PBC: before cutting them)."""
    data = Path(data)
    kind = D.dataset_kind(data)
    if kind == "pbc":
        files = (manifest or {}).get("split", {}).get("files")
        if not files:
            raise InputError(
                f"{data}: evaluating on PBC needs the bundle's held-out split, and this bundle has none; "
                "evaluate on a crops folder instead")
        samples = sample(D.split_from_manifest(files, data, split), limit, seed)
        missing = [s.path for s in samples if not s.path.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: listed in the bundle's {split} split but missing; is {data} the PBC folder?")
        # Cut the test crops the way the bundle's training crops were cut (unless told).
        crop_mask = D.recorded_crop_mask(manifest)
        source = mask or D.mask_source_of(crop_mask)
        mask_fn, mask_name = D.mask_function(source)
        if mask is None and mask_name != crop_mask and source == "segmenter":
            print(f"note: the bundle's crops were cut with {crop_mask}, these with {mask_name} "
                  "(the segmenter has changed since)", file=sys.stderr)
        it = samples
        if progress:
            from tqdm import tqdm
            it = tqdm(samples, desc="cropping", unit="img")
        crops = [D.centre_crop(load_image(s.path), None, mask_fn)[0] for s in it]
        return EvalSet(kind, crops, [s.label for s in samples], [str(s.path) for s in samples], source)
    if mask is not None:
        raise InputError(f"--mask picks how PBC images are cut; {data} holds {kind} crops with their own masks")
    if kind == "bccd":
        items = D.bccd_crops(data, (split,), labelled_only=True)
    elif kind == "jtsc":
        items = D.jtsc_crops(data)
    else:
        samples = sample(D.folder_samples(data), limit, seed)
        return EvalSet(kind, [load_image(s.path) for s in samples], [s.label for s in samples],
                       [str(s.path) for s in samples])
    items = sample([c for c in items if c.label is not None], limit, seed)
    if not items:
        raise InputError(f"{data}: no labelled single-cell crops in split {split!r}")
    return EvalSet(kind, [c.crop for c in items], [c.label for c in items], [c.name for c in items])


def sample(items: list, limit: int | None, seed: int = 0) -> list:
    """At most ``limit`` of ``items``, drawn at random (``seed``), in their original order."""
    if limit is None or len(items) <= limit:
        return items
    keep = np.random.default_rng(seed).choice(len(items), size=int(limit), replace=False)
    return [items[i] for i in sorted(keep)]
