"""``cvat-tools evaluate embedding``: each lab's cells in the classifier's and the refiner's
feature space (PCA then t-SNE), and how aligned the labs are (cvat_tools/explain/embedding.py).

    PLOT.png    one t-SNE scatter per model: colour = true class, marker = lab
    PLOT.json   per model and pair of labs: domain accuracy (0.5 = aligned) and per-class
                centroid distances; the crops used per lab; the run's settings and timings
"""
from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import BundleError, InputError
# the one place this command reads data sets (held-out PBC split, BCCD, JTSC, crop folders)
from ..data import cells as data_sets, eval_sets

COMMAND = "evaluate embedding"
PER_LAB = 300


def load_models(bundles: tuple[Path, ...]) -> list[tuple[str, object, Path]]:
    """(name, model, path) per bundle (classifier or refiner, kind from its manifest); default: the
    shipped classifier and refiner. A segmenter bundle has no features to plot: refused."""
    from ..bundle import read_manifest, shipped_bundle
    from ..classify.classifier import CellClassifier
    from ..classify.dann import Refiner

    paths = list(bundles) or [p for p in (shipped_bundle("classifier"), shipped_bundle("refiner")) if p]
    if not paths:
        raise BundleError("no shipped classifier or refiner; pass --bundle BUNDLE")
    models = []
    for path in paths:
        kind = read_manifest(path).get("kind")
        if kind not in ("classifier", "refiner"):
            raise BundleError(f"{path}: is a {kind} bundle, which has no classifier head; the "
                              "embedding plots a classifier's or a refiner's features: pass one of those")
        loader = CellClassifier if kind == "classifier" else Refiner
        name = kind if not bundles else f"{kind} ({Path(path).name})"
        models.append((name, loader.from_bundle(path), Path(path)))
    return models


def load_labs(dirs: tuple[Path, ...], split: str, manifest: dict, per_lab: int | None,
              mask: str | None, seed: int):
    from ..explain.embedding import LabCrops

    labs, seen = [], set()
    for folder in dirs:
        kind = data_sets.dataset_kind(folder)
        evalset = eval_sets.load_eval_set(folder, split, manifest, progress=True, limit=per_lab,
                                          seed=seed, mask=mask if kind == "pbc" else None)
        name = kind if kind not in seen else f"{kind}:{Path(folder).name}"
        seen.add(kind)
        labs.append(LabCrops(name, evalset.crops, evalset.truth))
    return labs


@click.command("embedding")
@click.option("--data", "dirs", required=True, multiple=True, type=click.Path(path_type=Path),
              help="A lab's data: PBC folder (the classifier's held-out split), BCCD, JTSC, or "
                   "DIR/<class>/*.png. Repeat for each lab.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="The plot, a .png file; PLOT.json is written beside it.")
@click.option("--bundle", "bundles", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Classifier or refiner bundle; repeat to compare (default: the shipped classifier "
                   "and refiner).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="Which split (PBC: the classifier's; BCCD: index.csv's).")
@click.option("--per-lab", type=click.IntRange(min=10), default=PER_LAB, show_default=True,
              help="Random sample of at most this many crops per lab (keeps the run short).")
@click.option("--mask", type=click.Choice(["classical", "segmenter"]), default="classical",
              show_default=True,
              help="PBC only: cut crops with this mask (classical: 80 s for 3 labs on 2 cores; "
                   "segmenter, as the shipped classifier's last stage was cut: ~10 min).")
@click.option("--seed", type=int, default=0, show_default=True)
def embedding(dirs, out, bundles, split, per_lab, mask, seed):
    """Plot each lab's cells in the models' feature space and measure how aligned they are."""
    from ..atomic import write_json
    from ..explain.embedding import alignment, penultimate, plot, project
    from ..outdir import check_out_with_record

    record = out.with_suffix(".json")
    check_out_with_record(out, record, COMMAND)
    started, cpu = time.perf_counter(), time.process_time()
    models = load_models(bundles)
    manifest = next((m.manifest for _, m, _ in models if m.kind == "classifier"), None) or _classifier_manifest()
    labs = load_labs(dirs, split, manifest, per_lab, mask, seed)
    crops = [c for lab in labs for c in lab.crops]
    lab_of = [lab.lab for lab in labs for _ in lab.crops]
    labels = [y for lab in labs for y in lab.labels]
    if len(crops) < 5:
        raise InputError(f"only {len(crops)} labelled crops in {', '.join(map(str, dirs))}; need at least 5")
    loaded = time.perf_counter()
    panels, summary = [], {}
    for name, model, path in models:
        features = penultimate(model, crops, progress=f"{name} features")
        pairs = alignment(features, lab_of, labels, seed)
        panels.append({"name": name, "xy": project(features, seed), "labs": lab_of, "labels": labels,
                       "pairs": pairs})
        summary[name] = {"bundle": str(path), "pairs": pairs}
    plot(panels, out, title=f"{split} crops: " + ", ".join(f"{lab.lab} {len(lab.crops)}" for lab in labs))
    result = {"command": f"cvat-tools {COMMAND}", "split": split, "per_lab": per_lab, "seed": seed,
              "mask": mask, "labs": {lab.lab: {"crops": len(lab.crops), "classes": _counts(lab.labels)}
                                     for lab in labs},
              "models": summary,
              # wall time, and this process's CPU time (all threads; less sensitive to other jobs)
              "seconds": {"crops": round(loaded - started, 1), "total": round(time.perf_counter() - started, 1),
                          "cpu": round(time.process_time() - cpu, 1)}}
    write_json(record, result, indent=2)
    for name, info in summary.items():
        for pair, v in info["pairs"].items():
            click.echo(f"{name}: {pair}: domain accuracy {v['domain_accuracy']['accuracy']} "
                       f"(0.5 = aligned), mean relative centroid distance "
                       f"{v['mean_relative_centroid_distance']}")
    click.echo(f"wrote {out} and {record} in {result['seconds']['total']} s")


def _classifier_manifest() -> dict:
    """The shipped classifier's manifest: its held-out PBC split when only refiners are given."""
    from ..bundle import read_manifest, shipped_bundle

    path = shipped_bundle("classifier")
    return read_manifest(path) if path else {}


def _counts(labels: list[str]) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(labels).items()))
