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
                  progress: bool = False, mask: str | None = None) -> EvalSet:
    """``mask`` (PBC only) overrides the bundle's own mask source."""
    data = Path(data)
    kind = D.dataset_kind(data)
    if kind == "pbc":
        files = (manifest or {}).get("split", {}).get("files")
        if not files:
            raise InputError(
                f"{data}: evaluating on PBC needs the bundle's held-out split, and this bundle has none; "
                "evaluate on a crops folder instead")
        samples = D.split_from_manifest(files, data, split)
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
        samples = D.folder_samples(data)
        return EvalSet(kind, [load_image(s.path) for s in samples], [s.label for s in samples],
                       [str(s.path) for s in samples])
    items = [c for c in items if c.label is not None]
    if not items:
        raise InputError(f"{data}: no labelled single-cell crops in split {split!r}")
    return EvalSet(kind, [c.crop for c in items], [c.label for c in items], [c.name for c in items])
