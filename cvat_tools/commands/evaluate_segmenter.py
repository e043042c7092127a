"""``cvat-tools evaluate segmenter``: mask AP, box AP50 and Dice on held-out data."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import click

from ..errors import InputError
from .scale_options import checked, scale_options


def _overlay(image, gt_masks, dets, path: Path) -> None:
    """Ground truth in blue, predictions in green with their score."""
    import cv2
    import numpy as np

    out = image.copy()
    for m in gt_masks:
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (0, 80, 255), 2)
    for d in dets:
        contours, _ = cv2.findContours(d.mask.bitmap.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE, offset=(d.mask.left, d.mask.top))
        cv2.drawContours(out, contours, -1, (0, 220, 0), 2)
        x1, y1, _, _ = d.box
        cv2.putText(out, f"{d.score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 160, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))


def evaluate(segmenter, samples, single_cell: bool, overlays: Path | None = None, limit: int | None = None):
    """Scores of one segmenter over samples; also seconds per image."""
    from ..imaging import load_image
    from ..progress import bar
    from ..segment.single_cell import segment_single_cell
    from ..metrics.segmentation import SegmentationScores

    scores = SegmentationScores()
    seconds = 0.0
    for sample in bar(samples[:limit] if limit else samples, desc=segmenter.name, unit="img", leave=False):
        image = load_image(sample.image)
        h, w = image.shape[:2]
        t0 = time.perf_counter()
        # Low threshold: AP needs the whole ranking; Dice uses detections scoring >= 0.5.
        if single_cell:
            dets = segment_single_cell(segmenter, image, threshold=0.05)
        else:
            dets = segmenter.segment(image, threshold=0.05)
        seconds += time.perf_counter() - t0
        gt = sample.load_masks()
        scores.add([d.full_mask(h, w) for d in dets], [d.score for d in dets], gt)
        if overlays is not None:
            name = Path(sample.name or sample.image.name).with_suffix(".png").name
            _overlay(image, gt, [d for d in dets if d.score >= 0.5], overlays / segmenter.name / name)
    summary = scores.summary()
    summary["seconds_per_image"] = seconds / max(scores.n_images, 1)
    return summary


@click.command("segmenter")
@click.option("--data", "data", required=True, type=click.Path(exists=True, file_okay=False),
              help="export (COCO) folder, BCCD folder or JTSC folder (detected from its files)")
@click.option("--bundle", "bundles", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="segmenter bundle (repeatable); default: the shipped one")
@click.option("--classical", is_flag=True,
              help="also score the classical watershed segmenter, side by side with the --bundle "
                   "ones (default: the shipped Mask R-CNN)")
@click.option("--split", default=None, help="BCCD: split to score (default test)")
@click.option("--overlays", type=click.Path(file_okay=False), default=None,
              help="write overlay PNGs (ground truth blue, prediction green) to this folder "
                   "(new, or an earlier --overlays folder: replaced as a whole)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="also write the scores as JSON")
@click.option("--limit", type=int, default=None, help="score only the first N images")
@click.option("--threads", type=int, default=2, help="CPU threads for the model")
@click.option("--scale", "scale_mode", type=click.Choice(["auto", "fixed"]), default="auto",
              show_default=True, help="auto: each image's cell size estimated and resampled to "
              "the trained size; fixed: long side -> the model's working size (the old rule).")
@scale_options
def segmenter(data, bundles, classical, split, overlays, json_out, limit, threads, scale_mode,
              cell_size, um_per_px):
    """Score segmenters on held-out data: COCO mask AP (0.50:0.95), AP50, AP75, box AP50,
    mean Dice of each ground-truth cell with its best prediction (score >= 0.5)."""
    import torch

    from ..atomic import atomic_dir, atomic_path
    from ..models.registry import load_segmenter
    from ..segment.classical import ClassicalSegmenter
    from ..data.fields import detect_format, read_samples

    scale_args = checked(cell_size, um_per_px)
    if overlays:
        from ..outdir import check_out

        check_out(overlays, "evaluate segmenter", flag="--overlays", inputs=[data])
    torch.set_num_threads(threads)
    fmt = detect_format(data)
    if fmt == "bccd":
        split = split or "test"
    elif split is not None:
        raise InputError(f"{data} is a {fmt} folder without splits; drop --split")
    samples = read_samples(data, split)
    # --classical compares: the watershed beside the given bundles, else beside the shipped one
    segmenters = [load_segmenter(b) for b in bundles] or [load_segmenter(None)]
    for seg in segmenters:
        if hasattr(seg, "set_scale"):
            seg.set_scale(scale_mode, **scale_args)
    if classical and not any(isinstance(seg, ClassicalSegmenter) for seg in segmenters):
        segmenters.append(ClassicalSegmenter())  # (no shipped Mask R-CNN: it is already there)
    single_cell = fmt == "jtsc"
    results = {}
    written = atomic_dir(overlays, command="evaluate segmenter") if overlays else contextlib.nullcontext()
    with written as folder:
        for seg in segmenters:
            key = seg.name if seg.name not in results else f"{seg.name}#{len(results)}"
            results[key] = evaluate(seg, samples, single_cell, folder, limit)
    where = f"{data}" + (f" [{split}]" if split else "")
    how = "scale estimated per image" if scale_mode == "auto" else "long side -> working size"
    if cell_size or um_per_px:
        how = f"cell size {cell_size} px" if cell_size else f"{um_per_px} um/px"
    click.echo(f"segmentation scores on {where} ({'single cells, ' if single_cell else ''}{how})")
    cols = ["images", "cells", "mask_AP", "mask_AP50", "mask_AP75", "box_AP50", "mean_dice", "seconds_per_image"]
    click.echo(f"{'segmenter':<12}" + "".join(f"{c:>18}" for c in cols))
    for name, r in results.items():
        cells = "".join(f"{r[c]:>18}" if isinstance(r[c], int) else f"{r[c]:>18.4f}" for c in cols)
        click.echo(f"{name:<12}{cells}")
    if json_out:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps({"data": str(data), "split": split, "scale": how,
                                       "results": results}, indent=2) + "\n")
