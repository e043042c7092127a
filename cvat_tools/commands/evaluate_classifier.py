"""``cvat-tools evaluate classifier|refiner``: scores on held-out crops, confusion-matrix plot."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..labels import PRIORS

SCORING = click.Choice(["fine", "pbc-folders", "cross-domain"])


def _report(name: str, report, plot: Path | None, as_json: bool) -> None:
    from ..metrics.classification import plot_confusion

    click.echo(json.dumps(report.to_dict()) if as_json else f"{name}\n{report.table()}")
    if plot:
        plot_confusion(report, plot, title=f"{name}: macro-F1 {report.macro_f1:.3f}")
        click.echo(f"wrote {plot}")


@click.command("classifier")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="PBC folder (bundle's held-out split), BCCD, JTSC, or DIR/<class>/*.png.")
@click.option("--bundle", type=click.Path(path_type=Path), help="Classifier bundle (default: shipped).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="Which split (PBC: the bundle's; BCCD: index.csv's).")
@click.option("--fold", "scoring", type=SCORING, help="Scoring (default: fine, cross-domain for BCCD/JTSC).")
@click.option("--plot", type=click.Path(path_type=Path), help="Confusion-matrix PNG to write.")
@click.option("--mask", "mask", type=click.Choice(["classical", "segmenter"]),
              help="PBC only: cut the crops with this mask instead of the bundle's own "
                   "(segmenter: the crops the pipeline would cut).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def classifier(data, bundle, split, scoring, plot, mask, as_json):
    """Score the classifier on held-out crops."""
    from ..classify.classifier import CellClassifier
    from ..data.eval_sets import load_eval_set
    from ..metrics.classification import default_scoring, score_predictions

    model = CellClassifier.from_bundle(bundle)
    evalset = load_eval_set(data, split, model.manifest, mask=mask)
    preds = model.predict(evalset.crops)
    scoring = scoring or default_scoring(evalset.kind)
    report = score_predictions(evalset.truth, [p.label for p in preds], scoring, model.labels)
    cut = f", {evalset.mask} masks" if evalset.mask else ""
    _report(f"classifier on {evalset.kind} {split} ({scoring}{cut})", report, plot, as_json)


@click.command("refiner")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="BCCD, JTSC, PBC folder (the classifier's held-out split) or DIR/<class>/*.png.")
@click.option("--bundle", type=click.Path(path_type=Path), help="Refiner bundle (default: shipped).")
@click.option("--classifier", "classifier_bundle", type=click.Path(path_type=Path),
              help="Classifier bundle for --rule and the PBC split (default: shipped).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--rule", is_flag=True, help="Score the final decision of the thesis rule (classifier + refiner).")
@click.option("--fold", "scoring", type=SCORING, default="cross-domain", show_default=True)
@click.option("--plot", type=click.Path(path_type=Path), help="Confusion-matrix PNG to write.")
@click.option("--prior", type=click.Choice(["bundle", *PRIORS]), default="bundle", show_default=True,
              help="Decision prior of the refiner: the bundle's own, the peripheral-blood differential, or none.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def refiner(data, bundle, classifier_bundle, split, rule, scoring, plot, prior, as_json):
    """Score the refiner (or the rule's final answer) over the cross-domain classes."""
    from ..classify.classifier import CellClassifier
    from ..classify.dann import Refiner
    from ..classify.rule import combine
    from ..data.eval_sets import load_eval_set
    from ..metrics.classification import score_predictions

    clf = CellClassifier.from_bundle(classifier_bundle)
    ref = Refiner.from_bundle(bundle, classifier_labels=clf.labels)
    if prior != "bundle":
        ref.set_prior(prior)
    evalset = load_eval_set(data, split, clf.manifest)
    r_preds = ref.predict(evalset.crops)
    if rule:
        c_preds = clf.predict(evalset.crops)
        predicted = [combine(c, r).label for c, r in zip(c_preds, r_preds)]
    else:
        predicted = [p.label for p in r_preds]
    report = score_predictions(evalset.truth, predicted, scoring, ref.labels)
    what = ("rule (classifier + refiner)" if rule else "refiner") + f", prior {ref.prior_name}"
    _report(f"{what} on {evalset.kind} {split} ({scoring})", report, plot, as_json)
