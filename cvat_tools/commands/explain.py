"""``cvat-tools explain``: what drove each cell's label, as Grad-CAM heat maps for review.

    OUT/<image>/cell_000.png   crop | mask | heat map per model, each model's top-3 scores
    OUT/<image>/sheet.png      every panel of the image on one contact sheet
    OUT/explain.json           per cell: box, label, attributes, top-3 and heat-in-mask per model

Cells, crops and labels come from the Pipeline, so a panel shows the crop each model received
and the label ``predict`` writes. An image without cells gets a note and no panel; OUT is
written beside itself and swapped in whole at the end (cvat_tools/outdir.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..devices import device_option
from ..errors import CvatToolsError, InputError
from .scale_options import checked, scale_options

MARKER = "explain.json"
METHOD_CHOICES = click.Choice(["gradcam", "gradcam++"])


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES_OR_DIRS...")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (replaced as a whole; must be new, empty or an earlier output).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Minimum detection score of a cell.")
@click.option("--method", type=METHOD_CHOICES, default="gradcam", show_default=True,
              help="gradcam: channel weights from mean gradients; gradcam++: per-location "
                   "weights (separates several small pieces of evidence better).")
@click.option("--weights", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with segmenter/ classifier/ refiner/ bundles (default: shipped).")
@click.option("--segmenter", type=click.Path(file_okay=False, path_type=Path),
              help="Segmenter bundle, or 'classical' for the watershed segmenter.")
@click.option("--classifier", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Classifier bundle (default: shipped).")
@click.option("--refiner", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="DANN refiner bundle (default: shipped).")
@click.option("--device", default="cpu", show_default=True, callback=device_option,
              help="cpu, cuda or cuda:N.")
@scale_options
@click.pass_context
def explain(ctx, inputs, out, threshold, method, weights, segmenter, classifier, refiner,
            device, cell_size, um_per_px):
    """Heat maps of what drove the classifier's and the refiner's answer for every cell."""
    from tqdm import tqdm

    from ..atomic import atomic_dir
    from ..explain.cells import explain_image, explainers
    from ..explain.output import no_cells_note, save_explained
    from ..formats.safe_names import unique_file_names
    from ..imaging import load_image
    from ..outdir import check_out
    from ..pipeline import Pipeline
    from .predict import collect_inputs

    check_out(out, "explain", inputs=inputs)
    scale_args = checked(cell_size, um_per_px)
    images, failures = collect_inputs(inputs)
    if not images:
        raise InputError("no image among the inputs: " + "; ".join(failures))
    pipeline = Pipeline.load(segmenter=segmenter, classifier=classifier, refiner=refiner,
                             weights=weights, device=device, require_classifier=False,
                             **scale_args)
    models = explainers(pipeline, method)
    folders = unique_file_names([item.name for item in images])
    summary: dict = {"method": method, "threshold": threshold, "models": vars(pipeline.info),
                     "images": [], "no_cells": [], "failed": failures}
    with atomic_dir(out, command="explain") as tmp:
        for item, folder in tqdm(list(zip(images, folders)), desc="explain", unit="image",
                                 disable=None):
            try:
                cells = explain_image(pipeline, models, load_image(item.path), threshold)
            except CvatToolsError as exc:
                message = str(exc)
                failures.append(message if message.startswith(str(item.path))
                                else f"{item.path}: {message}")
                continue
            if not cells:
                summary["no_cells"].append(item.name)
                click.echo(no_cells_note(item.path, threshold), err=True)
                continue
            summary["images"].append(save_explained(tmp, folder, item.name, cells))
        if not summary["images"]:  # nothing to show: leave OUT as it was
            raise InputError("no cells to explain in any input (nothing was written): "
                             + "; ".join(failures + [no_cells_note(n, threshold)
                                                     for n in summary["no_cells"]]))
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    n_cells = sum(len(im["cells"]) for im in summary["images"])
    click.echo(f"{n_cells} cells in {len(summary['images'])} images explained -> {out}")
    if failures:
        click.echo(f"{len(failures)} input(s) could not be explained:", err=True)
        for message in failures:
            click.echo(f"  {message}", err=True)
        ctx.exit(1)
