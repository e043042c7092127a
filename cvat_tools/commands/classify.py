"""``cvat-tools classify``: name the cell in each single-cell crop; write a CSV."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

HEADER = ["file", "label", "score", "top3"]


@click.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="CSV to write: file,label,score,top3.")
@click.option("--bundle", type=click.Path(path_type=Path), help="Classifier bundle (default: shipped).")
@click.option("--mask-centre", is_flag=True,
              help="Mask the centre cell first (whole single-cell images such as PBC's, not crops).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
def classify(images, out, bundle, mask_centre, batch_size):
    """Classify single-cell crops (as made by 'cvat-tools crop'); unreadable files are listed
    on stderr and make the exit status 1, the others are still written."""
    from ..atomic import atomic_path
    from ..classify.classifier import CellClassifier
    from ..errors import ImageError, InputError
    from ..imaging import list_images, load_image
    from ..outdir import check_out_file

    check_out_file(out, ",".join(HEADER), "a CSV written by 'cvat-tools classify'")
    model = CellClassifier.from_bundle(bundle)
    files: list[Path] = []
    for p in images:
        files += list_images(p) if p.is_dir() else [p]
    if not files:
        raise InputError("no images to classify (folders given hold no .png/.jpg files)")
    mask_fn = None
    if mask_centre:
        from ..train.classification_data import centre_crop, centre_mask_function
        mask_fn = centre_mask_function()[0]
    good, crops, bad = [], [], []
    for path in files:
        try:
            image = load_image(path)
        except ImageError as exc:
            bad.append(str(exc))
            continue
        if mask_fn is not None:
            image = centre_crop(image, None, mask_fn)[0]
        good.append(path)
        crops.append(image)
    preds = model.predict(crops, batch_size=batch_size) if crops else []
    with atomic_path(out) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            for path, pred in zip(good, preds):
                top3 = ";".join(f"{lab}:{p:.4f}" for lab, p in pred.top(3))
                writer.writerow([str(path), pred.label, f"{pred.score:.4f}", top3])
    click.echo(f"wrote {out}: {len(good)} classified" + (f", {len(bad)} unreadable" if bad else ""))
    if bad:
        for line in bad:
            click.echo(f"error: {line}", err=True)
        sys.exit(1)
