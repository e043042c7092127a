"""``cvat-tools train refiner``: domain-adversarial (DANN) refiner over the shared classes."""
from __future__ import annotations

from pathlib import Path

import click

from ..classify.stain import METHODS as STAIN_METHODS

from ..labels import PRIORS


@click.command("refiner")
@click.option("--source", required=True, type=click.Path(path_type=Path),
              help="Labelled source crops: the PBC folder or DIR/<class>/*.png.")
@click.option("--target", "targets", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Unlabelled target domain (BCCD or JTSC folder, or a folder of crops); repeatable.")
@click.option("--target-labels", type=click.Path(path_type=Path), help="A few labelled target crops: DIR/<class>/*.png.")
@click.option("--target-label-share", default=0.3, show_default=True, type=click.FloatRange(0, 1),
              help="With --target-labels: share of each class's source draws given to those few crops.")
@click.option("--classifier", type=click.Path(path_type=Path),
              help="Classifier bundle to start from (its body and held-out split); default: the shipped one.")
@click.option("--init", type=click.Path(path_type=Path),
              help="Continue from this refiner bundle (same labels, backbone and input size).")
@click.option("--target-im", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Weight of information maximization on the target crops (confident, prior-shaped decisions).")
@click.option("--conditional", is_flag=True,
              help="CDAN (Long et al. 2018): the domain discriminator sees features x class probabilities, "
                   "aligning each class across labs.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--stain", default="reinhard", show_default=True, type=click.Choice(STAIN_METHODS),
              help="Stain normalization fitted on the training crops (Reinhard: LAB statistics; Macenko: stain vectors; grey: luminance only, no colour).")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(1))
@click.option("--size", type=click.IntRange(32, 512), help="Input size (default: the classifier's).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(2), help="Per domain.")
@click.option("--lr", default=3e-4, show_default=True, type=float)
@click.option("--domain-weight", default=0.3, show_default=True, type=float, help="Scales the reversed gradient.")
@click.option("--domain-lr-mult", default=10.0, show_default=True, type=float, help="Discriminator lr / feature lr.")
@click.option("--low-res", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability of shrinking a source crop to 35-80% and back (coarser cameras).")
@click.option("--stain-random", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability of a strong stain/camera colour change on a source crop (other labs).")
@click.option("--prior", default="peripheral-blood", show_default=True, type=click.Choice(PRIORS),
              help="Decision prior stored in the bundle: a smear's reference differential, or none (uniform).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--cache", type=click.Path(path_type=Path), help="Source crop cache .npz (shared with the classifier).")
@click.option("--mask", "mask", type=click.Choice(["classical", "segmenter"]),
              help="How PBC source images are cut: the classical centre-cell mask or the shipped Mask R-CNN's "
                   "centre instance; default: the mask the --classifier bundle was trained on.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
@click.option("--resume", is_flag=True, help="Continue from OUT.work/last.pt (an error when there is none).")
def refiner(source, targets, target_labels, target_label_share, classifier, out, stain, epochs, size, batch_size, lr,
            domain_weight, domain_lr_mult, low_res, stain_random, prior, seed, cache, threads, resume, init, target_im,
            mask, conditional):
    """Train the DANN refiner (labels: the shared classes) and write a bundle of kind "refiner"."""
    from ..bundle import shipped_bundle
    from ..train.refiner import RefinerConfig, train_refiner

    classifier = classifier or shipped_bundle("classifier")
    cfg = RefinerConfig(source=source, targets=list(targets), out=out, classifier=classifier,
                        target_labels=target_labels, target_label_share=target_label_share, epochs=epochs, size=size, batch_size=batch_size, lr=lr,
                        domain_weight=domain_weight, domain_lr_mult=domain_lr_mult, stain=stain, low_res=low_res,
                        stain_random=stain_random, prior=prior, seed=seed, cache=cache, threads=threads, resume=resume,
                        init=init, target_im=target_im, mask=mask,
                        conditional=conditional)
    click.echo(f"wrote {train_refiner(cfg)}")
