"""``cvat-tools train refiner``: domain-adversarial (DANN) refiner over the shared classes."""
from __future__ import annotations

from pathlib import Path

import click

from ..classify.stain import METHODS as STAIN_METHODS
from ..labels import PRIORS
from .train_recipe import recipe_options, train


@click.command("refiner")
@click.option("--source", type=click.Path(path_type=Path),
              help="Labelled source crops: the PBC folder or DIR/<class>/*.png (at least 2 of the shared classes).")
@click.option("--target", "targets", multiple=True, type=click.Path(path_type=Path),
              help="Unlabelled target domain (BCCD or JTSC folder, or a folder of crops); repeatable.")
@click.option("--target-labels", type=click.Path(path_type=Path), help="A few labelled target crops: DIR/<class>/*.png.")
@click.option("--target-label-share", type=click.FloatRange(0, 1),
              help="With --target-labels: share of each class's source draws given to those few crops  [default: 0.3].")
@click.option("--classifier", type=click.Path(path_type=Path),
              help="Classifier bundle to start from (its body and held-out split); default: the shipped one.")
@click.option("--init", type=click.Path(path_type=Path),
              help="Continue from this refiner bundle (same labels, backbone and input size).")
@click.option("--target-im", type=click.FloatRange(0),
              help="Weight of information maximization on the target crops (confident, prior-shaped decisions)  "
                   "[default: 0].")
@click.option("--conditional", is_flag=True, default=None,
              help="CDAN (Long et al. 2018): the domain discriminator sees features x class probabilities, "
                   "aligning each class across labs.")
@click.option("--out", type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--stain", type=click.Choice(STAIN_METHODS),
              help="Stain normalization fitted on the training crops (Reinhard: LAB statistics; Macenko: stain "
                   "vectors; grey: luminance only, no colour)  [default: reinhard].")
@click.option("--epochs", type=click.IntRange(1), help="[default: 4]")
@click.option("--size", type=click.IntRange(32, 512), help="Input size (default: the classifier's).")
@click.option("--batch-size", type=click.IntRange(2), help="Per domain  [default: 32].")
@click.option("--lr", type=float, help="[default: 0.0003]")
@click.option("--domain-weight", type=float, help="Scales the reversed gradient  [default: 0.3].")
@click.option("--domain-lr-mult", type=float, help="Discriminator lr / feature lr  [default: 10].")
@click.option("--low-res", type=click.FloatRange(0, 1),
              help="Probability of shrinking a source crop to 35-80% and back (coarser cameras)  [default: 0].")
@click.option("--stain-random", type=click.FloatRange(0, 1),
              help="Probability of a strong stain/camera colour change on a source crop (other labs)  [default: 0].")
@click.option("--prior", type=click.Choice(PRIORS),
              help="Decision prior stored in the bundle: a smear's reference differential, or none (uniform)  "
                   "[default: peripheral-blood].")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--cache", type=click.Path(path_type=Path), help="Source crop cache .npz (shared with the classifier).")
@click.option("--mask", "mask", type=click.Choice(["classical", "segmenter"]),
              help="How PBC source images are cut: the classical centre-cell mask or the shipped Mask R-CNN's "
                   "centre instance; default: the mask the --classifier bundle was trained on.")
@click.option("--threads", type=click.IntRange(1), help="[default: 1]")
@recipe_options("training/refiner.yaml")
def refiner(config, **options):
    """Train the DANN refiner (labels: the shared classes) and write a bundle of kind "refiner"."""
    from ..bundle import shipped_bundle
    from ..train.recipe import resolve
    from ..train.refiner import RefinerConfig, train_refiner

    options["targets"] = list(options["targets"]) or None
    cfg = resolve(RefinerConfig, config, options, flags={"targets": "--target"})
    cfg.classifier = cfg.classifier or shipped_bundle("classifier")
    click.echo(f"wrote {train(train_refiner, cfg)}")
