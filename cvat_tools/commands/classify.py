"""``cvat-tools classify``: name the cell in each single-cell image or crop; write a CSV.

Every image goes through one path: a masked crop (``cvat-tools crop``/``export --crops``:
uniform grey around the cell) is classified as it is; any other image (a PBC image, another
lab's crop of any size, a crop with its background) is cut to the cell at its centre, found
by the scale-aware segmenter (segment/single_cell.py ``centre_cell``; the classical mask only
when the segmenter finds none). The CSV says which (column ``mask``).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from .scale_options import checked, scale_options

HEADER = ["file", "label", "score", "top3", "mask"]


@click.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="CSV to write: file,label,score,top3,mask.")
@click.option("--bundle", type=click.Path(path_type=Path), help="Classifier bundle (default: shipped).")
@click.option("--segmenter", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Segmenter bundle that finds the centre cell (default: shipped).")
@click.option("--as-crop", is_flag=True,
              help="Classify every image as it is (trust that each is a masked crop).")
@click.option("--mask-centre", is_flag=True, hidden=True,
              help="Kept for old scripts: finding the centre cell is now the default.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@scale_options
def classify(images, out, bundle, segmenter, as_crop, mask_centre, batch_size, cell_size, um_per_px):
    """Classify the cell of each single-cell image or crop; unreadable files are listed on
    stderr and make the exit status 1, the others are still written."""
    from ..atomic import atomic_path
    from ..classify.classifier import CellClassifier
    from ..crops import cell_crop
    from ..errors import ImageError, InputError
    from ..imaging import list_images, load_image
    from ..outdir import check_out_file
    from ..scale import is_masked_crop

    check_out_file(out, ",".join(HEADER), "a CSV written by 'cvat-tools classify'")
    scale_args = checked(cell_size, um_per_px)
    model = CellClassifier.from_bundle(bundle)
    files: list[Path] = []
    for p in images:
        files += list_images(p) if p.is_dir() else [p]
    if not files:
        raise InputError("no images to classify (folders given hold no .png/.jpg files)")
    seg = None
    if not as_crop:
        from ..models.registry import load_segmenter

        seg = load_segmenter(segmenter)
        if hasattr(seg, "set_scale"):
            seg.set_scale("auto", **scale_args)
    good, crops, sources, bad, no_cell = [], [], [], [], []
    for path in files:
        try:
            image = load_image(path)
        except ImageError as exc:
            bad.append(str(exc))
            continue
        source = "as_is"
        if not as_crop:
            if is_masked_crop(image):
                source = "masked_crop"
            else:
                from ..segment.single_cell import centre_cell

                det, source = centre_cell(seg, image)
                if det is not None:
                    image = cell_crop(image, det.mask.bitmap, det.mask.left, det.mask.top)
                else:  # still scored, but said: no cell was found to cut out
                    no_cell.append(str(path))
        good.append(path)
        crops.append(image)
        sources.append(source)
    preds = model.predict(crops, batch_size=batch_size) if crops else []
    with atomic_path(out) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            for path, pred, source in zip(good, preds, sources):
                top3 = ";".join(f"{lab}:{p:.4f}" for lab, p in pred.top(3))
                writer.writerow([str(path), pred.label, f"{pred.score:.4f}", top3, source])
    click.echo(f"wrote {out}: {len(good)} classified" + (f", {len(bad)} unreadable" if bad else ""))
    for path in no_cell:
        click.echo(f"warning: {path}: no cell found at the centre; the whole image was "
                   "classified (mask 'none' in the CSV)", err=True)
    if bad:
        for line in bad:
            click.echo(f"error: {line}", err=True)
        sys.exit(1)
