"""``cvat-tools classify``: name the cell in each single-cell image or crop; write a CSV.

Every image goes through one path: a masked crop (``cvat-tools crop``/``export --crops``:
uniform grey around the cell) is classified as it is; any other image (a PBC image, another
lab's crop of any size, a crop with its background) is cut to the cell at its centre, found
by the scale-aware segmenter (segment/single_cell.py ``centre_cell``; the classical mask only
when the segmenter finds none). The CSV says which (column ``mask``).

The classifier names each cell. With ``--rule`` (or ``--refiner BUNDLE``) it is named as
``predict`` names it: the classifier, then the refiner (unless the classifier says band or
blast), combined by the thesis rule (classify/rule.py). The CSV carries both answers, the
review flag and its reason either way (refiner "none" without the rule).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from ..labels import PRIORS
from .scale_options import checked, scale_options

OLD_HEADER = ["file", "label", "score", "top3", "mask"]  # before the refiner columns
HEADER = [*OLD_HEADER, "classifier", "classifier_score", "refiner", "refiner_score",
          "needs_review", "review_reason"]


def load_models(bundle, refiner, prior: str, rule: bool):
    """The classifier and the refiner (None without --rule or --refiner BUNDLE, or with
    --refiner none), their pairing checked from the manifests before any weights load (as
    Pipeline.load does)."""
    from ..bundle import shipped_bundle
    from ..classify.classifier import CellClassifier, _resolve
    from ..errors import BundleError
    from ..pipeline import asks_for_none, check_pair

    ref_path = None
    if (rule or refiner is not None) and not asks_for_none(refiner):
        ref_path = refiner or shipped_bundle("refiner")
        if ref_path is None:
            raise BundleError("--rule needs a refiner and none is shipped in "
                              "cvat_tools/weights/refiner; pass --refiner BUNDLE")
    check_pair(_resolve(bundle, "classifier"), ref_path)
    model = CellClassifier.from_bundle(bundle)
    ref = None
    if ref_path is not None:
        from ..classify.dann import Refiner

        ref = Refiner.from_bundle(ref_path, classifier_labels=model.labels)
        if prior != "bundle":
            ref.set_prior(prior)
    return model, ref


def rows(model, ref, crops: list, batch_size: int) -> list[list[str]]:
    """Per crop: label, score and top 3 of who named it (the rule), then the pipeline's
    attributes (both answers, review flag and reason)."""
    from ..classify.rule import combine
    from ..pipeline import decision_attributes

    preds = model.predict(crops, batch_size=batch_size) if crops else []
    ref_preds = ref.predict(crops, batch_size=batch_size) if ref is not None and crops else [None] * len(preds)
    out = []
    for pred, ref_pred in zip(preds, ref_preds):
        decision = combine(pred, ref_pred)
        named_by = ref_pred if ref_pred is not None and decision.label == ref_pred.label else pred
        top3 = ";".join(f"{lab}:{p:.4f}" for lab, p in named_by.top(3))
        attributes = decision_attributes(decision)
        out.append([decision.label, f"{decision.score:.4f}", top3, *(attributes[k] for k in HEADER[5:])])
    return out


@click.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="CSV to write: file,label,score,top3,mask, then both models' answers and the "
                   "review flag and its reason.")
@click.option("--bundle", type=click.Path(path_type=Path), help="Classifier bundle (default: shipped).")
@click.option("--rule", is_flag=True,
              help="Name each cell as predict does: the classifier, then the refiner unless it "
                   "says band or blast (the thesis rule). Default: the classifier's answer, the "
                   "better one on PBC-like single cells (reference.md).")
@click.option("--refiner", type=click.Path(file_okay=False, path_type=Path),
              help="Refiner bundle for the rule (implies --rule; default: shipped), or 'none': "
                   "the classifier's answer is final.")
@click.option("--prior", type=click.Choice(["bundle", *PRIORS]), default="bundle", show_default=True,
              help="Refiner's decision prior: the bundle's own, or none (all classes equally likely).")
@click.option("--segmenter", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Segmenter bundle that finds the centre cell (default: shipped).")
@click.option("--as-crop", is_flag=True,
              help="Classify every image as it is (trust that each is a masked crop).")
@click.option("--mask-centre", is_flag=True, hidden=True,
              help="Kept for old scripts: finding the centre cell is now the default.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@scale_options
def classify(images, out, bundle, rule, refiner, prior, segmenter, as_crop, mask_centre, batch_size, cell_size,
             um_per_px):
    """Classify the cell of each single-cell image or crop; unreadable files are listed on
    stderr and make the exit status 1, the others are still written."""
    from ..atomic import atomic_path
    from ..crops import cell_crop
    from ..errors import ImageError, InputError
    from ..imaging import list_images, load_image
    from ..outdir import check_out_file
    from ..scale import is_masked_crop

    what = "a CSV written by 'cvat-tools classify'"
    try:
        check_out_file(out, ",".join(HEADER), what)
    except InputError:  # a CSV of an older classify, without the refiner columns, is ours too
        check_out_file(out, ",".join(OLD_HEADER), what)
    scale_args = checked(cell_size, um_per_px)
    model, ref = load_models(bundle, refiner, prior, rule)
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
    named = rows(model, ref, crops, batch_size)
    with atomic_path(out) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            for path, row, source in zip(good, named, sources):
                writer.writerow([str(path), *row[:3], source, *row[3:]])
    click.echo(f"wrote {out}: {len(good)} classified" + (f", {len(bad)} unreadable" if bad else ""))
    for path in no_cell:
        click.echo(f"warning: {path}: no cell found at the centre; the whole image was "
                   "classified (mask 'none' in the CSV)", err=True)
    if bad:
        for line in bad:
            click.echo(f"error: {line}", err=True)
        sys.exit(1)
