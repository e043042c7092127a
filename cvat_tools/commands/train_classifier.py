"""``cvat-tools train classifier``: fine-tune EfficientNet-Lite on masked single-cell crops."""
from __future__ import annotations

from pathlib import Path

import click

from ..classify.stain import METHODS as STAIN_METHODS
from ..devices import device_option
from .train_recipe import recipe_options, train


@click.command("classifier")
@click.option("--data", "data", type=click.Path(path_type=Path), help="Crops folder: DIR/<class>/*.png|jpg.")
@click.option("--pbc", type=click.Path(path_type=Path), help="The PBC folder (fine labels from file names).")
@click.option("--out", type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--epochs", type=click.IntRange(1), help="[default: 8]")
@click.option("--size", type=click.IntRange(32, 512), help="Input size (px)  [default: 112; a pack's own size].")
@click.option("--backbone", type=click.Choice(["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]),
              help="[default: efficientnet_lite0]")
@click.option("--batch-size", type=click.IntRange(2), help="[default: 32]")
@click.option("--lr", type=float, help="[default: 0.001]")
@click.option("--stain", type=click.Choice(STAIN_METHODS),
              help="Stain normalization fitted on the training crops (Reinhard: LAB statistics; Macenko: stain "
                   "vectors; grey: luminance only, no colour)  [default: none].")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--cache", type=click.Path(path_type=Path), help="Crop cache .npz (made once, then reused).")
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads  [default: 1].")
@click.option("--init", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Start from this classifier bundle (same labels; a larger --size fine-tunes it).")
@click.option("--low-res", type=click.FloatRange(0, 1),
              help="Probability of a low-resolution view of a training crop (other cameras)  [default: 0].")
@click.option("--stain-random", type=click.FloatRange(0, 1),
              help="Probability of a strong stain/camera colour change instead of the mild jitter  [default: 0].")
@click.option("--mask", "mask", type=click.Choice(["classical", "segmenter"]),
              help="How PBC images are cut: the classical centre-cell mask, or the shipped Mask R-CNN's "
                   "centre instance (the crops the pipeline feeds the classifier; ~0.25 s per image)  "
                   "[default: classical].")
@click.option("--device", callback=device_option, help="cpu, or cuda (bf16 autocast)  [default: cpu].")
@click.option("--workers", type=click.IntRange(0),
              help="Processes that augment batches (a GPU outruns one core); results do not depend on it.")
@click.option("--pack-to", type=click.Path(dir_okay=False, path_type=Path),
              help="Only write the checked, deduped, split train/val crops to this pack (.npz) and stop.")
@click.option("--packed", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Train from a pack made by --pack-to (a machine without the raw data).")
@recipe_options("training/classifier.yaml")
def classifier(config, pack_to, **options):
    """Train the cell classifier and write a bundle of kind "classifier"."""
    from ..errors import InputError
    from ..train.classification import ClassifierConfig, prepare_data, train_classifier
    from ..train.recipe import resolve

    if pack_to is None and options["out"] is None:
        raise InputError("pass --out BUNDLE (or --pack-to FILE to only pack the data)")
    options["out"] = options["out"] or Path("unused")
    cfg = resolve(ClassifierConfig, config, options)
    if cfg.packed is not None and options["size"] is None and (config is None or "size" not in _keys(config)):
        from ..data.pack import read_meta

        cfg.size = int(read_meta(cfg.packed)["size"])  # a pack's crops have one size
    if pack_to is not None:
        from ..data.pack import write_pack

        if cfg.stain != "none" or cfg.packed is not None:
            raise InputError("--pack-to packs the crops as cut from --pbc/--data: drop --stain and --packed")
        path = write_pack(pack_to, prepare_data(cfg), cfg.size, cfg.seed, cfg.fractions)
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return
    click.echo(f"wrote {train(train_classifier, cfg)}")


def _keys(config: Path) -> set:
    from ..train.classification import ClassifierConfig
    from ..train.recipe import load_recipe

    return set(load_recipe(config, ClassifierConfig))
