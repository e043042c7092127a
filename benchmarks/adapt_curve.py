"""Learning curve of `cvat-tools adapt` through the one command (issue 17).

    OMP_NUM_THREADS=1 python benchmarks/adapt_curve.py --labs bccd,jtsc --cells 0,10,20,40,80 \
        --seeds 0,1,2 --cache /tmp/adapt/pbc_160.npz --work /tmp/adapt/curve --json curve.json

A run folder that already holds a finished weights folder (adapt.json) is read, not rerun.

For each lab, seed and number of corrected cells N: N cells drawn (stratified over the 4
classes both labs share, seeded) from the lab's pool become a CVAT XML 1.1 task whose shapes
are polygons from the given masks with source="manual"; the pool's other cells are added as
source="auto" (untouched pre-labels: the lab's unlabelled cells). `cvat-tools adapt TASK.xml
--images DIR --out W --force` (forced: the curve wants every point, the refusal is tested
elsewhere) then gives a weights folder, scored on cells it never saw:

  bccd   pool: BCCD train single-WBC images; scored on BCCD test (single-WBC images)
  jtsc   pool: a seeded half of JTSC; scored on the other half

0 cells is the parent (shipped) weights. Scores: the pipeline's final label (classifier ->
refiner -> rule) on crops cut with the data sets' masks; macro-F1 and per class over the
classes present. Also the PBC val macro-F1 the trainer reports (forgetting), adapt's own
held-out before/after and the wall time of each run.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")


def lab_cells(root: Path, lab: str) -> list[dict]:
    """One labelled WBC per image: {"image": path, "name": file name, "label", "mask": bool HxW}."""
    from cvat_tools import labels as L
    from cvat_tools.imaging import load_image
    from cvat_tools.data.cells import MIN_COMPONENT_AREA

    import cv2

    out = []
    with open(root / "index.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            cats = L.split_categories(row.get("category", ""))
            if len(cats) != 1 or cats[0] not in CLASSES:
                continue
            mask = load_image(root / row["mask"])[..., 0] > 0
            n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
            parts = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= MIN_COMPONENT_AREA]
            if lab == "bccd" and len(parts) != 1:
                continue  # which of two cells is which is not known
            if not parts:
                continue
            best = max(parts, key=lambda i: stats[i, cv2.CC_STAT_AREA])
            out.append({"image": root / row["image"], "name": Path(row["image"]).name,
                        "label": cats[0], "mask": comp == best, "split": row.get("split")})
    return out


def draw(pool: list[dict], n: int, seed: int) -> list[dict]:
    """n cells, as even over the classes as the pool allows, seeded."""
    rng = np.random.default_rng(seed)
    by_class = {c: [x for x in pool if x["label"] == c] for c in CLASSES}
    for c in CLASSES:
        by_class[c] = [by_class[c][i] for i in rng.permutation(len(by_class[c]))]
    picked, k = [], 0
    while len(picked) < n and any(by_class.values()):
        c = CLASSES[k % len(CLASSES)]
        if by_class[c]:
            picked.append(by_class[c].pop())
        k += 1
    return picked


def write_task(manual: list[dict], auto: list[dict], path: Path, box: int = 0) -> Path:
    """A CVAT XML 1.1 task: ``manual`` cells as corrected polygons, ``auto`` as untouched
    pre-labels; the first ``box`` manual cells as boxes (rectangles) instead of polygons."""
    from PIL import Image

    from cvat_tools.formats.annotations import Box, Dataset, ImageAnnotation, Instance, Polygon
    from cvat_tools.formats.cvat_xml import write_cvat_xml
    from cvat_tools.formats.masks import mask_to_polygons
    from cvat_tools.pipeline import label_specs

    images: dict[str, ImageAnnotation] = {}
    for k, (cell, source) in enumerate([(c, "manual") for c in manual] + [(c, "auto") for c in auto]):
        if cell["name"] not in images:
            width, height = Image.open(cell["image"]).size
            images[cell["name"]] = ImageAnnotation(cell["name"], width, height, id=len(images))
        if k < box:
            ys, xs = np.nonzero(cell["mask"])
            geometry = Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        else:
            geometry = Polygon(mask_to_polygons(cell["mask"], 0, 0)[0])
        images[cell["name"]].instances.append(Instance(cell["label"], geometry, source=source))
    return write_cvat_xml(Dataset(list(images.values()), label_specs()), path)


def score(weights: Path | None, cells: list[dict]) -> dict:
    """The pipeline's final label on crops cut with the given masks."""
    from cvat_tools.adapt.scoring import final_labels, summary
    from cvat_tools.crops import cell_crop
    from cvat_tools.imaging import load_image
    from cvat_tools.pipeline import Pipeline
    from cvat_tools.metrics.classification import classification_report

    pipe = Pipeline.load(weights=weights)
    sizes = {pipe.classifier.input_size, pipe.refiner.input_size}
    crops = {s: [] for s in sizes}
    for cell in cells:
        image = load_image(cell["image"])
        for s in sizes:
            crops[s].append(cell_crop(image, cell["mask"], size=s))
    predicted = final_labels(pipe.classifier, pipe.refiner, crops[pipe.classifier.input_size],
                             crops[pipe.refiner.input_size])
    truth = [c["label"] for c in cells]
    labels = [c for c in CLASSES if c in truth] + sorted(set(predicted) - set(CLASSES))
    return summary(classification_report(truth, predicted, labels))


def adapt_run(task: Path, images: Path, out: Path, args) -> tuple[dict, float]:
    """Run the command, or read a finished run of the same task (a resumed benchmark)."""
    if (out / "adapt.json").is_file():
        record = json.loads((out / "adapt.json").read_text())
        return record, record["seconds"]
    cmd = [sys.executable, "-m", "cvat_tools.cli", "adapt", str(task), "--images", str(images),
           "--out", str(out), "--force", "--threads", str(args.threads), "--steps", str(args.steps),
           "--seed", "0"] + (["--cache", str(args.cache)] if args.cache else [])
    start = time.time()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.time() - start
    if done.returncode:
        raise SystemExit(f"adapt failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads((out / "adapt.json").read_text()), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labs", default="bccd,jtsc")
    ap.add_argument("--cells", default="0,10,20,40,80")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--auto", type=int, help="at most this many untouched auto cells in a task (default: all)")
    ap.add_argument("--boxes", type=int, default=0, help="the first N corrected cells drawn as boxes")
    args = ap.parse_args()
    rows = []
    for lab in args.labs.split(","):
        root = args.data / ("bccd_wbc" if lab == "bccd" else "jtsc_wbc")
        cells = lab_cells(root, lab)
        for seed in [int(s) for s in args.seeds.split(",")]:
            if lab == "bccd":
                pool = [c for c in cells if c["split"] == "train"]
                test = [c for c in cells if c["split"] == "test"]
            else:
                order = np.random.default_rng(1000 + seed).permutation(len(cells))
                pool = [cells[i] for i in order[:len(cells) // 2]]
                test = [cells[i] for i in order[len(cells) // 2:]]
            for n in [int(x) for x in args.cells.split(",")]:
                row = {"lab": lab, "seed": seed, "cells": n}
                if n == 0:
                    row["test"] = score(None, test)
                else:
                    manual = draw(pool, n, seed)
                    chosen = {id(c) for c in manual}
                    run = args.work / f"{lab}_s{seed}_n{n}"
                    run.mkdir(parents=True, exist_ok=True)
                    auto = [c for c in pool if id(c) not in chosen][:args.auto]
                    task = write_task(manual, auto, run / "task.xml", box=args.boxes)
                    record, seconds = adapt_run(task, root / "images", run / "weights", args)
                    row.update(test=score(run / "weights", test), seconds=round(seconds, 1),
                               held_out=record["metrics"], counts=record["counts"])
                rows.append(row)
                t = row["test"]
                print(f"{lab} seed {seed} {n:>3} cells: test macro-F1 {t['macro_f1']:.3f} "
                      + " ".join(f"{k[:4]} {v['f1']:.2f}" for k, v in t["per_class"].items())
                      + (f"  PBC val {row['held_out']['pbc_val_macro_f1_after']}  {row['seconds']:.0f} s"
                         if n else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
