"""The one call into the refiner trainer: the parent refiner continued (``init``) on the PBC
source (so the other classes are not forgotten), the lab's training corrections as labelled
target crops, and the lab's other cells unlabelled (the DANN target).

The recipe is the measured few-shot one (training/README.md, "Continuing a refiner"): lr 1e-4,
the corrections get half of their class's draws, the parent's stain, prior, mask and
augmentation kept; ``steps`` bounds the run (<= 10 minutes for 40 cells on 2 cores).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2

from ..commands.export import _label_folder
from .cutting import CutCell


@dataclass
class AdaptRecipe:
    source: Path  # the PBC folder (labelled source)
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    share: float = 0.5  # of a class's source draws, the share given to the lab's corrections
    seed: int = 0
    threads: int = 1
    cache: Path | None = None  # PBC crop cache .npz, reused across runs
    progress: bool = True


def write_crops(cells: list[CutCell], folder: Path, labelled: bool) -> Path:
    """PNG crops: ``folder/<class>/<n>.png`` (labelled) or ``folder/<n>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, cut in enumerate(cells):
        sub = folder / _label_folder(cut.cell.label) if labelled else folder
        sub.mkdir(exist_ok=True)
        if not cv2.imwrite(str(sub / f"{n:05d}.png"), cv2.cvtColor(cut.crop, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {sub / f'{n:05d}.png'} (disk full?)")
    return folder


def warm_cache(recipe: AdaptRecipe, size: int, mask: str) -> None:
    """Cut every PBC image of the refiner's classes into ``recipe.cache`` once: the trainer
    reads its train and val crops from one cache file only when it holds both."""
    from .. import labels as L
    from ..data import cells as D

    if recipe.cache is None or Path(recipe.cache).is_file() or D.dataset_kind(recipe.source) != "pbc":
        return
    D.build_cache(D.pbc_samples(recipe.source, L.SHARED_CLASSES), size, True, recipe.cache,
                  progress=recipe.progress, mask=mask)


def train_refiner_on(recipe: AdaptRecipe, parent: dict[str, Path], labelled: list[CutCell],
                     unlabelled: list[CutCell], work: Path, out: Path) -> Path:
    """Train into ``out`` (a new folder) from the crops written under ``work``."""
    from ..bundle import read_manifest
    from ..data import cells as D
    from ..train.refiner import RefinerConfig, train_refiner

    manifest = read_manifest(parent["refiner"])
    done = manifest.get("training") or {}
    warm_cache(recipe, int(manifest.get("input_size", 160)), D.bundle_mask_source(manifest))
    cfg = RefinerConfig(
        source=recipe.source, targets=[write_crops(labelled + unlabelled, work / "target", False)],
        target_labels=write_crops(labelled, work / "labelled", True), out=out,
        classifier=parent["classifier"], init=parent["refiner"], epochs=1, max_steps=recipe.steps,
        batch_size=recipe.batch_size, lr=recipe.lr, target_label_share=recipe.share,
        stain=(manifest.get("stain") or {}).get("method", "none"),
        prior=(manifest.get("decision_prior") or {}).get("name", "peripheral-blood"),
        mask=D.bundle_mask_source(manifest), low_res=float(done.get("low_res", 0.5)),
        stain_random=float(done.get("stain_random", 0.5)),
        conditional=(manifest.get("architecture") or {}).get("model") == "CDAN",
        seed=recipe.seed, threads=recipe.threads, cache=recipe.cache, progress=recipe.progress)
    return train_refiner(cfg)
