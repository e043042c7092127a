"""``cvat-tools adapt``, top to bottom: every check before the first training step, the
refiner trained inside the output's temporary folder, the before/after check, then the whole
weights folder swapped in (or nothing, when the result is worse and --force is not given)."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import CvatToolsError, InputError
from . import corrections, holdout, scoring
from .cutting import cut_cells
from .frames import check_present, check_sizes
from .training import AdaptRecipe, train_refiner_on

COMMAND = "adapt"
KINDS = ("segmenter", "classifier", "refiner")
PROVENANCE = "adapt.json"


class WorseModel(CvatToolsError):
    """The adapted bundle scores lower on the held-out corrections than its parent."""


@dataclass
class AdaptOptions:
    out: Path
    recipe: AdaptRecipe
    weights: Path | None = None  # parent weights folder; None: the shipped bundles
    include_auto: bool = False
    force: bool = False
    seed: int = 0
    inputs: dict = field(default_factory=dict)  # what was read, for the provenance
    echo: Callable[[str], None] = print


def parent_bundles(weights: Path | None) -> dict[str, Path]:
    """segmenter/classifier/refiner of the parent; adapt continues a refiner, so it must exist."""
    from ..bundle import MANIFEST, SHIPPED

    folder = Path(weights) if weights is not None else SHIPPED
    found = {kind: folder / kind for kind in KINDS if (folder / kind / MANIFEST).is_file()}
    missing = [kind for kind in KINDS if kind not in found]
    if missing:
        raise InputError(f"{folder}: weights folder lacks {', '.join(m + '/' for m in missing)}; adapt "
                         "starts from a complete weights folder (segmenter/, classifier/, refiner/)")
    return found


def _weights_sha(bundle: Path) -> str | None:
    from ..bundle import read_manifest

    manifest = read_manifest(bundle)
    return (manifest.get("weights") or {}).get("sha256")


def file_sha256(path: Path) -> str | None:
    if not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def echo_selection(selection: corrections.Selection, held: list[str], echo) -> None:
    held_set = set(held)
    echo("corrected cells per class (train + held out):")
    for label in corrections.REFINER_CLASSES:
        n = sum(c.label == label for c in selection.cells)
        if n:
            h = sum(c.label == label and c.key in held_set for c in selection.cells)
            echo(f"  {label:<14} {n:>4}  ({n - h} + {h})")
    if selection.left_out:
        echo(f"left out {len(selection.left_out)} shape(s):")
        for reason, n in selection.left_out_summary().items():
            echo(f"  {n:>4} x {reason}")


def prepare(dataset, frames, options: AdaptOptions, where: str, folder: str):
    """Select, check, cut and split: everything that can refuse the input, before training."""
    from ..pipeline import Pipeline

    selection = corrections.select(dataset, options.include_auto)
    corrections.check(selection, where)
    needed = {c.image for c in selection.cells}
    check_present(frames, needed, where, folder)
    check_sizes(dataset, frames, needed, where)
    lab_cells = [c for c in selection.unlabelled if c.image in frames.paths or c.image in frames.data]
    parent = parent_bundles(options.weights)
    pipeline = Pipeline.load(weights=parent["segmenter"].parent)
    sizes = {pipeline.classifier.input_size, pipeline.refiner.input_size}
    cut, failed = cut_cells(selection.cells, dataset, frames, sizes, pipeline.segmenter,
                            options.recipe.progress)
    others, _ = cut_cells(lab_cells, dataset, frames, sizes, pipeline.segmenter, False)
    selection.left_out += failed
    selection.cells = [c.cell for c in cut]
    corrections.check(selection, where)  # boxes the segmenter could not cut may empty a class
    keys: dict[str, list[str]] = {}
    for c in selection.cells:
        keys.setdefault(c.label, []).append(c.key)
    train_keys, held_keys = holdout.split(keys, options.seed)
    pipeline.segmenter = None  # done: its memory goes back before training starts
    return selection, cut, others, train_keys, held_keys, pipeline, parent


def run_adapt(dataset, frames, options: AdaptOptions, where: str, folder: str) -> dict:
    from ..atomic import atomic_dir
    from ..bundle import read_manifest
    from ..classify.dann import Refiner
    from ..outdir import check_out

    started = time.time()
    check_out(options.out, COMMAND)
    selection, cut, others, train_keys, held_keys, pipeline, parent = prepare(
        dataset, frames, options, where, folder)
    echo = options.echo
    echo_selection(selection, held_keys, echo)
    held_set = set(held_keys)
    train = [c for c in cut if c.cell.key not in held_set]
    held = [c for c in cut if c.cell.key in held_set]
    before = scoring.score_cells(pipeline.classifier, pipeline.refiner, held)
    with atomic_dir(options.out, command=COMMAND) as tmp:
        refiner_dir = train_refiner_on(options.recipe, parent, train, others, tmp / ".work", tmp / "refiner")
        for leftover in (tmp / ".work", tmp / "refiner.work", tmp / "refiner.ckpt"):
            shutil.rmtree(leftover, ignore_errors=True)
        adapted = Refiner.from_bundle(refiner_dir, classifier_labels=pipeline.classifier.labels)
        after = scoring.score_cells(pipeline.classifier, adapted, held)
        record = provenance(options, selection, train_keys, held_keys, before, after, parent,
                            read_manifest(refiner_dir), others, time.time() - started)
        echo_scores(record, echo)
        if after.macro_f1 < before.macro_f1 and not options.force:
            raise WorseModel(
                f"the adapted model is worse on the {len(held)} held-out corrections (macro-F1 "
                f"{after.macro_f1:.3f} < {before.macro_f1:.3f} before); nothing was written to "
                f"{options.out}. Correct more cells, or pass --force to write it anyway")
        for kind in ("segmenter", "classifier"):
            shutil.copytree(parent[kind], tmp / kind)
        _stamp_refiner(refiner_dir, record)
        (tmp / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def provenance(options, selection, train_keys, held_keys, before, after, parent, new_manifest,
               others, seconds) -> dict:
    pbc_after = (new_manifest.get("metrics") or {}).get("pbc_val_macro_f1")
    from ..bundle import read_manifest

    pbc_before = (read_manifest(parent["refiner"]).get("metrics") or {}).get("pbc_val_macro_f1")
    return {
        "command": COMMAND,
        "inputs": options.inputs,
        "parent": {kind: {"path": str(path), "weights_sha256": _weights_sha(path)}
                   for kind, path in parent.items()},
        "counts": selection.counts(),
        "left_out": selection.left_out_summary(),
        "left_out_shapes": selection.left_out[:500],
        "unlabelled_lab_cells": len(others),
        "holdout": {"fraction": holdout.HOLDOUT, "seed": options.seed, "cells": held_keys},
        "train_cells": train_keys,
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options.recipe).items()
                   if k != "progress"},
        "metrics": {"held_out_before": scoring.summary(before), "held_out_after": scoring.summary(after),
                    "pbc_val_macro_f1_before": pbc_before, "pbc_val_macro_f1_after": pbc_after},
        "retrained": ["refiner"],
        "kept_from_parent": ["segmenter", "classifier"],
        "forced": bool(options.force and after.macro_f1 < before.macro_f1),
        "seconds": round(seconds, 1),
    }


def _stamp_refiner(refiner_dir: Path, record: dict) -> None:
    """The refiner's own manifest carries the provenance too (it travels without adapt.json
    when someone copies the bundle alone); the checksum covers the weights, not this field."""
    path = refiner_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["adapt"] = {k: record[k] for k in ("inputs", "parent", "counts", "holdout", "metrics")}
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def echo_scores(record: dict, echo) -> None:
    m = record["metrics"]
    b, a = m["held_out_before"], m["held_out_after"]
    echo(f"held-out corrections ({b['n']} cells): macro-F1 {b['macro_f1']:.3f} -> {a['macro_f1']:.3f}")
    for label, row in b["per_class"].items():
        echo(f"  {label:<14} F1 {row['f1']:.3f} -> {a['per_class'][label]['f1']:.3f}  (n={row['support']})")
    if m["pbc_val_macro_f1_after"] is not None:
        echo(f"PBC val macro-F1 (other classes kept): {m['pbc_val_macro_f1_before']} -> "
             f"{m['pbc_val_macro_f1_after']}")
