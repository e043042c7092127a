"""``cvat-tools predict``: annotate image files with the Pipeline, for CVAT's "Upload annotations".

    OUT/annotations.xml | instances_default.json | annotations.json | yolo/   (by --format)
    OUT/labels.json          the label set with its attributes, as CVAT's label constructor
                             ("Raw") takes it: create the task from it so the import matches
    OUT/overlays/*.png       --overlay: outlines, label and score drawn on each image
    OUT/report/counts.csv    --report: differential count per image and in total
    OUT/report/counts.png    --report: bar chart of the total differential count
    OUT/report/review.csv    --report: each cell to review (marked ?N on its overlay) and why
    OUT/predict.json         what was run: models, threshold, images (with their cells to
                             review and why), failures
    OUT/explain/             --explain: Grad-CAM panels per cell (as ``cvat-tools explain``)
    OUT/report/review_queue.csv  --report: every cell, the ones a correction would teach most
                             first (review_priority: see pipeline.review_priority)

OUT is written beside itself and swapped in whole at the end (no half-written output). Bad
files (corrupt, not images, too large) are skipped and listed at the end with the reason; the
command then exits 1 after writing the good ones.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..atomic import atomic_dir
from ..devices import device_option
from ..errors import CvatToolsError, InputError
from ..formats.annotations import Dataset, ImageAnnotation, Instance, Mask
from ..imaging import IMAGE_SUFFIXES, list_images, load_image
from ..labels import PRIORS
from .scale_options import checked, scale_options

FORMATS = {  # --format -> what is written under OUT
    "cvat": "annotations.xml",
    "coco": "instances_default.json",
    "json": "annotations.json",
    "yolo": "yolo",
}
MARKER = "predict.json"  # the run's summary (atomic.MARKER is what marks OUT as ours)


@dataclass
class ImageInput:
    path: Path
    name: str  # the name CVAT matches: relative to the folder given, else the file name


def collect_inputs(paths: tuple[str, ...]) -> tuple[list[ImageInput], list[str]]:
    """Image files from files and folders (recursive), and "path: reason" for what is not."""
    found: list[ImageInput] = []
    bad: list[str] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = list_images(path)
            if not images:
                bad.append(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            entries = [ImageInput(p, p.relative_to(path).as_posix()) for p in images]
        elif path.exists():
            entries = [ImageInput(path, path.name)]
        else:
            bad.append(f"{path}: no such file or folder")
            continue
        for entry in entries:
            if entry.name in seen:
                bad.append(f"{entry.path}: another input already has the name {entry.name!r}")
                continue
            seen.add(entry.name)
            found.append(entry)
    return found, bad


def check_out(out: Path, inputs=()) -> None:
    """Refuse to replace a folder that is not an earlier predict output, or holds an input."""
    from ..outdir import check_out as check_out_dir

    check_out_dir(out, "predict", inputs=inputs)


# ---------------------------------------------------------------------------------------------
# overlays and the differential count


# Saturated colours that stay visible on pink/violet smears (one per label, in label order).
_COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128),
           (170, 110, 40), (128, 0, 0)]


def _palette(labels: list[str]) -> dict[str, tuple[int, int, int]]:
    return {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(labels)}


def review_list(instances: list[Instance]) -> list[dict]:
    """The flagged cells of one image in drawing order: mark ("?1", ...), index, label, reason."""
    from ..pipeline import ATTR_REVIEW_REASON, review_note

    flagged = [(i, inst) for i, inst in enumerate(instances)
               if inst.attributes.get("needs_review") == "true"]
    return [{"mark": f"?{n}", "cell": i, "label": inst.label, "detection_score": round(inst.score, 4),
             "reason": inst.attributes.get(ATTR_REVIEW_REASON, ""),
             "note": review_note(inst.label, inst.attributes)}
            for n, (i, inst) in enumerate(flagged, 1)]


def draw_overlay(image: np.ndarray, instances: list[Instance], colors: dict) -> np.ndarray:
    """The image with each cell's outline, label and detection score; a cell to review gets a
    mark (?1, ?2, ...) that the legend in a corner explains."""
    import cv2

    canvas = image.copy()
    scale = max(image.shape[:2]) / 1000.0
    thickness = max(2, int(round(2 * scale)))
    marks = {entry["cell"]: entry["mark"] for entry in review_list(instances)}
    for index, inst in enumerate(instances):
        mask = inst.geometry
        assert isinstance(mask, Mask)
        color = colors.get(inst.label, (255, 255, 0))
        contours, _ = cv2.findContours(np.asarray(mask.bitmap, np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE, offset=(mask.left, mask.top))
        cv2.drawContours(canvas, contours, -1, (0, 0, 0), thickness + 2)  # dark rim: contrast
        cv2.drawContours(canvas, contours, -1, color, thickness)
        text = f"{inst.label} {inst.score:.2f}" + (f" {marks[index]}" if index in marks else "")
        font_scale = max(0.4, 0.6 * scale)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        x = int(min(max(mask.left, 0), max(image.shape[1] - tw, 0)))
        y = int(mask.top - 4 if mask.top - th - base - 4 > 0 else mask.top + mask.height + th + 4)
        y = min(max(y, th + 2), image.shape[0] - base - 1)
        cv2.rectangle(canvas, (x, y - th - 2), (x + tw, y + base), color, -1)
        ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 128 else (255, 255, 255)
        cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink,
                    max(1, thickness // 2), cv2.LINE_AA)
    if marks:
        _legend(canvas, instances, review_list(instances), scale)
    return canvas


def _legend(canvas: np.ndarray, instances: list[Instance], review: list[dict], scale: float) -> None:
    """The reasons of the ?N marks, in the corner that hides the fewest cell pixels."""
    import cv2

    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.38, 0.45 * scale)
    lines = ["?N: type in doubt (the number after a type is its detection score)"]
    lines += [f"{entry['mark']} {entry['note']}" for entry in review]
    (_, th), base = cv2.getTextSize("Ag", font, font_scale, 1)
    step = th + base + 4
    fits = max(2, (canvas.shape[0] // 2) // step)  # at most half the image high
    if len(lines) > fits:
        lines = lines[:fits - 1] + [f"... {len(lines) - fits + 1} more in predict.json"]
    width = min(canvas.shape[1], 8 + max(cv2.getTextSize(t, font, font_scale, 1)[0][0] for t in lines))
    height = min(canvas.shape[0], 6 + step * len(lines))
    cells = np.zeros(canvas.shape[:2], bool)
    for inst in instances:
        m = inst.geometry
        cells[m.top:m.top + m.height, m.left:m.left + m.width] |= np.asarray(m.bitmap, bool)[
            :max(0, canvas.shape[0] - m.top), :max(0, canvas.shape[1] - m.left)]
    corners = [(canvas.shape[0] - height, 0), (canvas.shape[0] - height, canvas.shape[1] - width),
               (0, 0), (0, canvas.shape[1] - width)]
    top, left = min(corners, key=lambda c: cells[c[0]:c[0] + height, c[1]:c[1] + width].sum())
    box = canvas[top:top + height, left:left + width]
    box[:] = (0.25 * box + 0.75 * 255).astype(np.uint8)  # light panel, the image faint behind
    for i, text in enumerate(lines):
        cv2.putText(canvas, text, (left + 4, top + 3 + th + i * step), font, font_scale,
                    (0, 0, 0), 1, cv2.LINE_AA)


def save_overlay(folder: Path, name: str, overlay: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(overlay).save(folder / (name.replace("/", "__").rsplit(".", 1)[0] + ".png"))


def write_report(dataset: Dataset, folder: Path, class_order: list[str]) -> None:
    """counts.csv (per image and TOTAL: count, percent, needs_review per cell type) + counts.png."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    total: Counter = Counter()
    total_review: Counter = Counter()
    for image in dataset.images:
        counts = Counter(inst.label for inst in image.instances)
        review = Counter(inst.label for inst in image.instances
                         if inst.attributes.get("needs_review") == "true")
        total.update(counts)
        total_review.update(review)
        rows.extend(_count_rows(image.name, counts, review, class_order))
    rows.extend(_count_rows("TOTAL", total, total_review, class_order))
    with open(folder / "counts.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "cell_type", "count", "percent", "needs_review"])
        writer.writerows(rows)
    _bar_chart(total, class_order, folder / "counts.png", len(dataset.images))
    with open(folder / "review.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "mark", "cell", "label", "detection_score", "reason", "note"])
        for image in dataset.images:
            writer.writerows([image.name, e["mark"], e["cell"], e["label"], e["detection_score"],
                              e["reason"], e["note"]] for e in review_list(image.instances))


def write_review_queue(dataset: Dataset, path: Path) -> None:
    """review_queue.csv: every cell ranked by review_priority, highest first (what to correct
    before ``cvat-tools adapt``); cell = the cell's position among its image's shapes."""
    from ..pipeline import ATTR_REVIEW_PRIORITY

    cells = [(int(inst.attributes.get(ATTR_REVIEW_PRIORITY, "0")), image.name, k, inst)
             for image in dataset.images for k, inst in enumerate(image.instances)]
    cells.sort(key=lambda row: (-row[0], row[1], row[2]))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "image", "cell", "label", "classifier", "refiner", "review_priority",
                         "needs_review", "x", "y", "width", "height"])
        for rank, (priority, name, k, inst) in enumerate(cells, 1):
            m = inst.geometry
            writer.writerow([rank, name, k, inst.label, inst.attributes.get("classifier", ""),
                             inst.attributes.get("refiner", ""), priority,
                             inst.attributes.get("needs_review", ""), m.left, m.top, m.width, m.height])


def _count_rows(name: str, counts: Counter, review: Counter, order: list[str]) -> list[list]:
    n = sum(counts.values())
    labels = order + sorted(set(counts) - set(order))
    return [[name, label, counts[label], f"{100.0 * counts[label] / n:.1f}" if n else "0.0",
             review[label]] for label in labels]


def _bar_chart(total: Counter, order: list[str], path: Path, n_images: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = order + sorted(set(total) - set(order))
    n = sum(total.values())
    values = [100.0 * total[label] / n if n else 0.0 for label in labels]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    bars = ax.bar(range(len(labels)), values, color="#4c72b0")
    for bar, label in zip(bars, labels):
        if total[label]:
            ax.annotate(str(total[label]), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_ylabel("% of white blood cells")
    ax.set_title(f"Differential count: {n} cells in {n_images} images")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_scale_report(scales: dict[str, dict | None], path: Path) -> None:
    """scale.csv: how each image was resampled for the segmenter (factor, WBC size, method)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "factor", "cell_size_px", "method", "fallback"])
        for name, sc in scales.items():
            sc = sc or {}
            writer.writerow([name, sc.get("factor", ""), sc.get("cell_size", ""),
                             sc.get("method", "classical"), sc.get("fallback") or ""])


def cvat_label_constructor() -> list[dict]:
    """CVAT's label constructor JSON ("Raw" tab) for our labels and attributes."""
    from ..pipeline import label_specs

    return [
        {"name": spec.name, "type": "any", "attributes": [
            {"name": a.name, "mutable": a.mutable, "input_type": a.input_type,
             "default_value": a.default, "values": list(a.values)}
            for a in spec.attributes]}
        for spec in label_specs()
    ]


def write_annotations(dataset: Dataset, fmt: str, folder: Path,
                      image_files: dict[str, Path] | None = None) -> Path:
    target = folder / FORMATS[fmt]
    if fmt == "cvat":
        from ..formats.cvat_xml import write_cvat_xml

        return write_cvat_xml(dataset, target, task_name="cvat-tools predict")
    if fmt == "coco":
        from ..formats.coco import write_coco

        return write_coco(dataset, target)
    if fmt == "json":
        from ..formats.thesis_json import write_thesis_json

        return write_thesis_json(dataset, target)
    from ..formats.yolo import write_yolo

    # YOLO lists its images in train.txt: copy them so that every listed path exists
    return write_yolo(dataset, target, image_files=image_files)



class _Explained:
    """--explain: the instances come from the explainer's answers (the same as
    Pipeline.run's), and each image's panels go to OUT/explain/<image>/."""

    def __init__(self, pipeline, images: list[ImageInput], method: str = "gradcam"):
        from ..explain.cells import explainers
        from ..formats.safe_names import unique_file_names

        self.pipeline = pipeline
        self.models = explainers(pipeline, method)
        names = [item.name for item in images]
        self.folders = dict(zip(names, unique_file_names(names)))
        self.summary: dict = {"method": method, "images": [], "no_cells": []}

    def run(self, rgb: np.ndarray, item: ImageInput, threshold: float, tmp: Path) -> list[Instance]:
        from ..explain.cells import explain_image
        from ..explain.output import no_cells_note, save_explained

        cells = explain_image(self.pipeline, self.models, rgb, threshold)
        if not cells:
            self.summary["no_cells"].append(item.name)
            click.echo(no_cells_note(item.path, threshold), err=True)
            return []
        self.summary["images"].append(
            save_explained(tmp, f"explain/{self.folders[item.name]}", item.name, cells))
        return [cell.instance for cell in cells]


# ---------------------------------------------------------------------------------------------
# the command


def _annotate(pipeline, item, threshold: float, failures: list[str], warnings_seen: list[str],
              scales: dict[str, dict | None], stage=None, explained=None, tmp=None):
    """(image, instances) of one input, or None with the reason added to ``failures``; records
    the scale the segmenter applied and warns about grayscale images."""
    try:
        rgb = load_image(item.path)
        instances = (explained.run(rgb, item, threshold, tmp) if explained
                     else pipeline.run(rgb, threshold=threshold, stage=stage))
    except CvatToolsError as exc:
        message = str(exc)
        if not message.startswith(str(item.path)):
            message = f"{item.path}: {message}"
        failures.append(message)
        return None
    scale = pipeline.last_scale
    scales[item.name] = scale.as_dict() if scale is not None else None
    if scale is not None and scale.grayscale and not scale.empty:
        warnings_seen.append(f"{item.path}: grayscale image (R = G = B): the segmenter "
                             "was trained on stained colour smears; cells may be missed")
    return rgb, instances


def _summary(pipeline, dataset: Dataset, fmt: str, threshold: float, cell_size, um_per_px,
             scales: dict[str, dict | None], failures: list[str], warnings_seen: list[str]) -> dict:
    """The run's summary (predict.json): models, prior, scale, per-image cells, what failed."""
    return {
        "threshold": threshold,
        "format": fmt,
        "models": vars(pipeline.info),
        # the refiner's decision prior, so a prediction can be read (and rerun) later
        "refiner_prior": pipeline.refiner.decision_prior if pipeline.refiner is not None else None,
        "scale": {"cell_size": cell_size, "um_per_px": um_per_px,
                  "mode": "given" if cell_size or um_per_px else "estimated per image"},
        "images": [{"name": im.name, "cells": len(im.instances), "scale": scales.get(im.name),
                    "review": review_list(im.instances)} for im in dataset.images],
        "failed": failures,
        "warnings": warnings_seen,
        "skipped_by_writer": dataset.skipped,
    }


def _report_run(dataset: Dataset, out: Path, fmt: str, failures: list[str], warnings_seen: list[str]) -> bool:
    """Tell the user what was written and what failed; False when an input failed."""
    cells = sum(len(im.instances) for im in dataset.images)
    click.echo(f"{cells} cells in {len(dataset.images)} images -> {out}"
               f"{os.sep}{FORMATS[fmt]}")
    for message in warnings_seen:
        click.echo(f"warning: {message}", err=True)
    if failures:
        click.echo(f"{len(failures)} input(s) could not be annotated:", err=True)
        for message in failures:
            click.echo(f"  {message}", err=True)
    return not failures


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES_OR_DIRS...")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (replaced as a whole; must be new, empty or an earlier output).")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="cvat", show_default=True,
              help="cvat: CVAT for images 1.1 XML; coco: COCO 1.0 instances; json: thesis JSON; "
                   "yolo: Ultralytics YOLO segmentation.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Minimum detection score of a cell.")
@click.option("--overlay", is_flag=True, help="Write overlays/*.png with outlines, labels, scores.")
@click.option("--report", is_flag=True, help="Write report/counts.csv and report/counts.png.")
@click.option("--explain", "explain", is_flag=True,
              help="Write explain/: Grad-CAM panels of every cell (see 'cvat-tools explain').")
@click.option("--weights", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with segmenter/ classifier/ refiner/ bundles (default: shipped).")
@click.option("--segmenter", type=click.Path(file_okay=False, path_type=Path),
              help="Segmenter bundle, or 'classical' for the watershed segmenter (default: "
                   "WEIGHTS/segmenter, else the shipped Mask R-CNN).")
@click.option("--classifier", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Classifier bundle (default: shipped).")
@click.option("--refiner", type=click.Path(file_okay=False, path_type=Path),
              help="DANN refiner bundle (default: shipped), or 'none': the classifier's answer "
                   "is final.")
@click.option("--prior", type=click.Choice(["bundle", *PRIORS]), default="bundle",
              show_default=True, help="Refiner's decision prior: the bundle's own (shipped: the adult "
              "peripheral-blood differential), or none (all classes equally likely: e.g. a leukaemia smear).")
@click.option("--device", default="cpu", show_default=True, callback=device_option,
              help="cpu, cuda or cuda:N.")
@scale_options
@click.pass_context
def predict(ctx, inputs, out, fmt, threshold, overlay, report, explain, weights, segmenter,
            classifier, refiner, prior, device, cell_size, um_per_px):
    """Find, outline and name every white blood cell in IMAGES_OR_DIRS (files or folders).

    A progress bar shows on stderr when it is a terminal (stdout carries only the summary)."""
    from ..pipeline import Pipeline, label_specs
    from ..progress import bar, status

    check_out(out, inputs)
    scale_args = checked(cell_size, um_per_px)
    images, failures = collect_inputs(inputs)
    if not images:
        raise InputError("no image among the inputs: " + "; ".join(failures))
    status(f"loading models for {len(images)} image(s) ...")
    pipeline = Pipeline.load(segmenter=segmenter, classifier=classifier, refiner=refiner,
                             weights=weights, device=device, **scale_args)
    if prior != "bundle" and pipeline.refiner is not None:
        pipeline.refiner.set_prior(prior)
    explained = _Explained(pipeline, images) if explain else None
    dataset = Dataset(labels=label_specs())
    class_order = [spec.name for spec in dataset.labels]
    colors = _palette(class_order)
    scales: dict[str, dict | None] = {}  # image name -> the Scale the segmenter applied
    warnings_seen: list[str] = []
    with atomic_dir(out, command="predict") as tmp:
        if overlay:
            (tmp / "overlays").mkdir()
        progress = bar(images, desc="predict", unit="image")
        for item in progress:
            # the bar says which image, and which stage of it
            stage = lambda text, name=item.name: progress.set_postfix_str(f"{name}: {text}")  # noqa: E731
            done = _annotate(pipeline, item, threshold, failures, warnings_seen, scales, stage,
                             explained=explained, tmp=tmp)
            if done is None:
                continue
            rgb, instances = done
            height, width = rgb.shape[:2]
            dataset.images.append(ImageAnnotation(item.name, width, height, instances,
                                                  id=len(dataset.images)))
            if overlay:
                save_overlay(tmp / "overlays", item.name, draw_overlay(rgb, instances, colors))
        if not dataset.images:  # nothing to write: leave OUT as it was
            raise InputError("no image could be annotated: " + "; ".join(failures))
        write_annotations(dataset, fmt, tmp, {item.name: item.path for item in images})
        (tmp / "labels.json").write_text(json.dumps(cvat_label_constructor(), indent=2) + "\n")
        if report:
            write_report(dataset, tmp / "report", class_order)
            write_review_queue(dataset, tmp / "report" / "review_queue.csv")
            write_scale_report(scales, tmp / "report" / "scale.csv")
        summary = _summary(pipeline, dataset, fmt, threshold, cell_size, um_per_px, scales,
                           failures, warnings_seen)
        summary["explain"] = explained.summary if explained else None
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    if not _report_run(dataset, out, fmt, failures, warnings_seen):
        ctx.exit(1)
