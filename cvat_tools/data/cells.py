"""Labelled single-cell images for the classifier and the refiner: find, check, dedupe, split, crop.

The order matters and is fixed here:
  1. list the images and their labels (crop folders, or PBC with labels from the file names),
  2. refuse bad input before any training starts (empty folders, unknown class names,
     classes too small to split),
  3. drop byte-identical copies (sha1) BEFORE splitting, so no picture sits in two splits,
  4. a seeded stratified train/val/test split,
  5. crop once into an in-memory cache (uint8, size x size) that training and evaluation read;
     PBC crops are cut with the classical centre-cell mask or, with ``mask="segmenter"``, the
     shipped Mask R-CNN's centre instance (what the pipeline cuts on a smear).

BCCD and JTSC crops are cut with their given masks (:func:`bccd_crops`, :func:`jtsc_crops`).
"""
from __future__ import annotations

import csv
import hashlib
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from .. import labels as L
from ..crops import cell_crop, resize_square
from ..errors import ImageError, InputError
from ..imaging import list_images, load_image

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
MIN_PER_CLASS = 3  # one image per split at least
MIN_COMPONENT_AREA = 200  # px; BCCD mask specks below this are not cells


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str


# --- 1. listing -----------------------------------------------------------------------------

def pbc_samples(root: str | Path, classes: Iterable[str] = L.PBC_FINE_CLASSES) -> list[Sample]:
    """PBC images with their fine label from the file name; IG / NEUTROPHIL without subtype
    (pbc_label None) and labels outside ``classes`` are left out."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: PBC folder not found; pass the folder holding basophil/, ig/, ...")
    wanted = set(classes)
    out = [Sample(p, lab) for p in list_images(root) if (lab := L.pbc_label(p)) in wanted]
    if not out:
        raise InputError(f"{root}: no PBC images with a known fine label (BA_*.jpg, SNE_*.jpg, ...)")
    return out


def folder_samples(root: str | Path) -> list[Sample]:
    """``root/<class>/*.png|jpg``; class folder names are resolved by labels.canonical."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: crops folder not found")
    out: list[Sample] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = L.canonical(sub.name)
        if label is None:
            raise InputError(
                f"{sub}: folder name {sub.name!r} is not a known cell class; rename it to one of "
                f"{', '.join(L.ALL_CLASSES)}"
            )
        images = list_images(sub)
        if not images:
            raise InputError(f"{sub}: class folder has no images (.png/.jpg); remove it or add crops")
        out += [Sample(p, label) for p in images]
    if not out:
        raise InputError(f"{root}: no class folders with images; expected {root}/<class>/*.png")
    return out


# --- 2. checks ------------------------------------------------------------------------------

def check_samples(samples: list[Sample], min_per_class: int = MIN_PER_CLASS) -> None:
    """Refuse classes too small to appear in train, val and test."""
    counts = Counter(s.label for s in samples)
    small = {k: v for k, v in counts.items() if v < min_per_class}
    if small:
        names = ", ".join(f"{k} ({v})" for k, v in sorted(small.items()))
        raise InputError(
            f"classes with fewer than {min_per_class} images cannot be split into train/val/test: "
            f"{names}; add images or remove those class folders"
        )
    if len(counts) < 2:
        raise InputError(f"need at least 2 classes to train a classifier, found {sorted(counts)}")


def check_readable(samples: list[Sample]) -> None:
    """Decode every image once so a bad file stops us before training, naming the file."""
    bad = []
    for s in samples:
        try:
            load_image(s.path)
        except ImageError as exc:
            bad.append(str(exc))
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise InputError("unreadable images: " + "; ".join(bad[:5]) + more + "; remove or replace them")


# --- 3. dedupe ------------------------------------------------------------------------------

def sha1_of(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def dedupe(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Keep the first (sorted by path) of each group of byte-identical files.

    Returns (kept, dropped). Identical bytes under two different labels are kept once, under
    the label of the first path: the picture cannot be both.
    """
    seen: set[str] = set()
    kept, dropped = [], []
    for s in sorted(samples, key=lambda s: str(s.path)):
        digest = sha1_of(s.path)
        if digest in seen:
            dropped.append(s)
        else:
            seen.add(digest)
            kept.append(s)
    return kept, dropped


# --- 4. split -------------------------------------------------------------------------------

def stratified_split(
    samples: list[Sample], seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> dict[str, list[Sample]]:
    """Per class: shuffle with ``seed``, then cut train/val/test by ``fractions`` (>= 1 each)."""
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: str(s.path)):
        by_class[s.label].append(s)
    rng = random.Random(seed)
    out: dict[str, list[Sample]] = {k: [] for k in SPLITS}
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        n = len(items)
        n_val = max(1, int(round(n * fractions[1])))
        n_test = max(1, int(round(n * fractions[2])))
        n_train = n - n_val - n_test
        if n_train < 1:
            raise InputError(f"class {label!r} has {n} images: too few for a train/val/test split")
        out["train"] += items[:n_train]
        out["val"] += items[n_train:n_train + n_val]
        out["test"] += items[n_train + n_val:]
    return out


def split_to_manifest(split: dict[str, list[Sample]], root: Path) -> dict[str, list[list[str]]]:
    """[relative path, label] per split, for the bundle manifest (evaluation reads it back)."""
    def rel(p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(Path(root).resolve()))
        except ValueError:
            return str(p)
    return {k: [[rel(s.path), s.label] for s in v] for k, v in split.items()}


def split_from_manifest(files: dict[str, list[list[str]]], root: Path, which: str) -> list[Sample]:
    if which not in files:
        raise InputError(f"the bundle has no {which!r} split; it has {sorted(files)}")
    root = Path(root).resolve()
    return [Sample(root / rel, label) for rel, label in files[which]]


# --- 5. crops -------------------------------------------------------------------------------

def centre_mask_function() -> tuple[Callable[[np.ndarray], np.ndarray | None], str]:
    """The classical centre-cell mask and the name caches and manifests record for it."""
    from ..segment.classical import centre_cell_mask

    return centre_cell_mask, "segment.classical.centre_cell_mask"


MASK_SOURCES = ("classical", "segmenter")
SEGMENTER_MASK_PREFIX = "segmenter:"
SEGMENTER_THRESHOLD = 0.3  # a single-cell image holds its cell; a low bar finds pale ones


class SegmenterCentreMask:
    """The mask the pipeline would cut: the segmenter's instance nearest the image centre.

    The pipeline feeds the classifier crops cut with the Mask R-CNN's masks; a classifier
    trained on classical masks loses about 2 points of PBC val macro-F1 on them
    (experiments/mask_source.py). Images where the segmenter finds nothing fall back to the
    classical mask (counted in ``fallbacks``).
    """

    def __init__(self, bundle: str | Path | None = None, threshold: float = SEGMENTER_THRESHOLD):
        from ..bundle import read_manifest, shipped_bundle
        from ..segment.maskrcnn import MaskRCNNSegmenter

        path = Path(bundle) if bundle is not None else shipped_bundle("segmenter")
        if path is None:
            raise InputError("--mask segmenter needs a segmenter bundle, and none is shipped or given")
        self.segmenter = MaskRCNNSegmenter.from_bundle(path)
        self.sha256 = read_manifest(path)["weights"]["sha256"]
        self.threshold = threshold
        self.classical = centre_mask_function()[0]
        self.fallbacks = 0

    @property
    def name(self) -> str:
        return f"{SEGMENTER_MASK_PREFIX}{self.sha256[:12]}"

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        from ..segment.single_cell import centre_detection

        h, w = image.shape[:2]
        det = centre_detection(self.segmenter.segment(image, self.threshold), h, w)
        if det is None:
            self.fallbacks += 1
            return self.classical(image)
        return det.full_mask(h, w)


def mask_function(source: str = "classical") -> tuple[Callable[[np.ndarray], np.ndarray | None], str]:
    """(mask function, the name recorded in caches and manifests) for a PBC mask source."""
    if source == "classical":
        return centre_mask_function()
    if source == "segmenter":
        fn = SegmenterCentreMask()
        return fn, fn.name
    raise InputError(f"unknown mask source {source!r}; use one of {', '.join(MASK_SOURCES)}")


def mask_source_of(crop_mask: str | None) -> str:
    """The mask source a bundle's recorded ``crop_mask`` name stands for."""
    return "segmenter" if (crop_mask or "").startswith(SEGMENTER_MASK_PREFIX) else "classical"


def recorded_crop_mask(manifest: dict | None) -> str | None:
    """The mask name a bundle's manifest records for its PBC training crops (None: not recorded)."""
    return (((manifest or {}).get("training") or {}).get("data") or {}).get("crop_mask")


def bundle_mask_source(manifest: dict | None) -> str:
    """The mask source (MASK_SOURCES) that cuts PBC crops the way this bundle's were cut."""
    return mask_source_of(recorded_crop_mask(manifest))


def centre_crop(image: np.ndarray, size: int | None, mask_fn=None) -> tuple[np.ndarray, bool]:
    """Masked crop of the centre cell; (crop, True) or, when no mask is found, the centre
    disk of radius 0.3 * the short side (crop, False) so the image is still scored."""
    mask_fn = mask_fn or centre_mask_function()[0]
    mask = mask_fn(image)
    found = mask is not None and bool(np.any(mask))
    if not found:
        h, w = image.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (0.3 * min(h, w)) ** 2
    return cell_crop(image, mask, size=size), found


@dataclass
class CropCache:
    """All crops of a sample list, uint8 N x S x S x 3, plus labels and source paths."""
    images: np.ndarray
    labels: list[str]
    paths: list[str]
    info: dict = field(default_factory=dict)

    def subset(self, wanted: Iterable[str]) -> "CropCache":
        index = {p: i for i, p in enumerate(self.paths)}
        rows = [index[str(p)] for p in wanted]
        return CropCache(self.images[rows], [self.labels[i] for i in rows], [self.paths[i] for i in rows], self.info)


def build_cache(
    samples: list[Sample], size: int, pbc_mode: bool, cache_file: Path | None = None, progress: bool = True,
    mask: str = "classical",
) -> CropCache:
    """Crop every sample once (PBC: centre-cell mask from ``mask``, a MASK_SOURCES name; crop
    folders: taken as given, resized).

    With ``cache_file`` (an .npz) an existing cache of the same size and files is reused; one cut
    with another mask is refused (it took long to cut, e.g. ~30 min with the segmenter, and
    the refiner and the classifier may share a cache path).
    """
    paths = [str(s.path) for s in samples]
    if mask not in MASK_SOURCES:
        raise InputError(f"unknown mask source {mask!r}; use one of {', '.join(MASK_SOURCES)}")
    if cache_file is not None and Path(cache_file).is_file():
        data = np.load(cache_file, allow_pickle=False)
        cached_mask = str(data["mask"]) if "mask" in data else None
        cached = CropCache(data["images"], list(data["labels"]), [str(p) for p in data["paths"]],
                           {"cache": str(cache_file), "mask": cached_mask})
        if pbc_mode and mask_source_of(cached_mask) != mask:
            raise InputError(f"{cache_file}: this crop cache was cut with {cached_mask}, this run cuts PBC "
                             f"with the {mask} mask; pass another --cache file")
        if int(data["size"]) == size and set(paths) <= set(cached.paths):
            return cached.subset(paths)
    mask_fn, mask_name = mask_function(mask) if pbc_mode else (None, "given crops")
    images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    missed = 0
    iterator = samples
    if progress:
        from tqdm import tqdm
        iterator = tqdm(samples, desc=f"cropping {size}px", unit="img")
    for i, s in enumerate(iterator):
        image = load_image(s.path)
        if pbc_mode:
            images[i], found = centre_crop(image, size, mask_fn)
            missed += not found
        else:
            images[i] = resize_square(image, size)
    info = {"mask": mask_name, "mask_missed": missed}
    if isinstance(mask_fn, SegmenterCentreMask):
        info["segmenter_fallbacks"] = mask_fn.fallbacks
    cache = CropCache(images, [s.label for s in samples], paths, info)
    if cache_file is not None:
        from ..atomic import atomic_path
        with atomic_path(cache_file) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=images, labels=np.array(cache.labels), paths=np.array(paths),
                         size=np.array(size), mask=np.array(info["mask"]))
    return cache


# --- BCCD / JTSC: crops cut with their given masks ----------------------------------------------

@dataclass
class LabelledCrop:
    crop: np.ndarray
    label: str | None  # None: not known which cell is which (two-WBC BCCD images)
    name: str


def _read_index(root: Path) -> list[dict[str, str]]:
    index = root / "index.csv"
    if not index.is_file():
        raise InputError(f"{root}: no index.csv (image,mask,category[,split]) found")
    with open(index, newline="") as fh:
        return list(csv.DictReader(fh))


def _mask_components(mask: np.ndarray) -> list[np.ndarray]:
    n, comp, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8))
    return [comp == i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= MIN_COMPONENT_AREA]


def _gray_mask(path: Path) -> np.ndarray:
    return load_image(path)[..., 0]


def bccd_crops(root: str | Path, splits: Iterable[str] = ("test",), size: int | None = None,
               labelled_only: bool = True) -> list[LabelledCrop]:
    """BCCD WBC crops with the given masks. ``labelled_only``: single-WBC images whose category
    names one class (a two-cell image's category does not say which cell is which)."""
    root = Path(root)
    wanted = set(splits)
    out = []
    for row in _read_index(root):
        if row.get("split") not in wanted:
            continue
        cats = L.split_categories(row.get("category", ""))
        comps = _mask_components(_gray_mask(root / row["mask"]))
        if not comps:
            continue
        single = len(comps) == 1 and len(cats) == 1
        if labelled_only and not single:
            continue
        image = load_image(root / row["image"])
        for k, comp in enumerate(comps):
            out.append(LabelledCrop(cell_crop(image, comp, size=size), cats[0] if single else None,
                                    f"{row['image']}#{k}"))
    return out


def jtsc_crops(root: str | Path, size: int | None = None) -> list[LabelledCrop]:
    """JTSC: one WBC per image, mask given (largest component taken)."""
    root = Path(root)
    out = []
    for row in _read_index(root):
        comps = _mask_components(_gray_mask(root / row["mask"]))
        if not comps:
            continue
        comp = max(comps, key=lambda c: int(c.sum()))
        cats = L.split_categories(row.get("category", ""))
        image = load_image(root / row["image"])
        out.append(LabelledCrop(cell_crop(image, comp, size=size), cats[0] if len(cats) == 1 else None,
                                row["image"]))
    return out


def dataset_kind(root: str | Path) -> str:
    """'pbc', 'bccd', 'jtsc' or 'crops' from what the folder holds."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    index = root / "index.csv"
    if index.is_file():
        header = index.read_text().splitlines()[0].lower()
        return "bccd" if "split" in header else "jtsc"
    subs = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    if {"ig", "neutrophil"} <= subs and any(p.stem.rsplit("_", 1)[0].upper() in L.PBC_PREFIXES
                                            for p in list_images(root / "ig")[:5]):
        return "pbc"
    return "crops"


def target_crops(root: str | Path, size: int) -> list[np.ndarray]:
    """Unlabelled target-domain crops for the refiner: BCCD train+val (all cells), JTSC (all),
    or a plain folder of crops (any depth)."""
    kind = dataset_kind(root)
    if kind == "bccd":
        crops = [c.crop for c in bccd_crops(root, ("train", "val"), size=size, labelled_only=False)]
    elif kind == "jtsc":
        crops = [c.crop for c in jtsc_crops(root, size=size)]
    elif kind == "pbc":
        raise InputError(f"{root}: is the PBC source set, not a target domain")
    else:
        crops = []
        for p in list_images(root):
            crops.append(resize_square(load_image(p), size))
    if not crops:
        raise InputError(f"{root}: target folder has no images (BCCD/JTSC index.csv or *.png crops)")
    return crops
