"""Held-out evaluation sets for the classifier and the refiner, and how labels are scored.

    PBC   -> only the bundle's held-out split (default test), centre-cell crops cut with the
             bundle's own mask source (classical, or the segmenter's centre instance)
    BCCD  -> single-WBC images of a split (default test), crops cut with the given masks
    JTSC  -> every image, crop cut with the given mask
    crops -> DIR/<class>/*.png as given

Scorings: "fine" (the model's labels), "pbc-folders" (fine labels folded to PBC's 8 folders),
"cross-domain" (the 4 classes every lab here has; band cell counts as neutrophil, any other
prediction is "other" and simply wrong).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import labels as L
from ..errors import InputError
from ..imaging import load_image
from . import classification_data as D
from .classification_metrics import ClassificationReport, classification_report

SCORINGS = ("fine", "pbc-folders", "cross-domain")
OTHER = "other"


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


def fold(label: str, scoring: str) -> str:
    if scoring == "pbc-folders":
        return L.FINE_TO_PBC_FOLDER.get(label, label)
    if scoring == "cross-domain":
        label = "neutrophil" if label == "band cell" else label
        return label if label in L.CROSS_DOMAIN_CLASSES else OTHER
    return label


def default_scoring(kind: str) -> str:
    return "cross-domain" if kind in ("bccd", "jtsc") else "fine"


def score_predictions(truth: list[str], predicted: list[str], scoring: str,
                      model_labels: list[str] | None = None) -> ClassificationReport:
    """Report over the scoring's label set; for cross-domain, only truths among the 4 classes."""
    if scoring not in SCORINGS:
        raise InputError(f"unknown scoring {scoring!r}; use one of {SCORINGS}")
    pairs = [(fold(t, scoring), fold(p, scoring)) for t, p in zip(truth, predicted)]
    if scoring == "cross-domain":
        pairs = [(t, p) for t, p in pairs if t != OTHER]
        labels = list(L.CROSS_DOMAIN_CLASSES) + [OTHER]
    elif scoring == "pbc-folders":
        labels = list(L.PBC_FOLDERS)
    else:
        labels = sorted(set(model_labels or []) | {t for t, _ in pairs} | {p for _, p in pairs})
    if not pairs:
        raise InputError(f"nothing to score: no true labels among the {scoring} classes")
    t, p = zip(*pairs)
    return classification_report(list(t), list(p), labels)
