"""``cvat-tools train classifier``: fine-tune EfficientNet-Lite on masked single-cell crops."""
from __future__ import annotations

from pathlib import Path

import click

from ..classify.stain import METHODS as STAIN_METHODS
from ..devices import device_option


@click.command("classifier")
@click.option("--data", "data", type=click.Path(path_type=Path), help="Crops folder: DIR/<class>/*.png|jpg.")
@click.option("--pbc", type=click.Path(path_type=Path), help="The PBC folder (fine labels from file names).")
@click.option("--out", type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(1))
@click.option("--size", type=click.IntRange(32, 512), help="Input size (px)  [default: 112; a pack's own size].")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              type=click.Choice(["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(2))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--stain", default="none", show_default=True, type=click.Choice(STAIN_METHODS),
              help="Stain normalization fitted on the training crops (Reinhard: LAB statistics; Macenko: stain vectors; grey: luminance only, no colour).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--cache", type=click.Path(path_type=Path), help="Crop cache .npz (made once, then reused).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue from OUT.work/last.pt (an error when there is none).")
@click.option("--init", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Start from this classifier bundle (same labels; a larger --size fine-tunes it).")
@click.option("--low-res", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability of a low-resolution view of a training crop (other cameras).")
@click.option("--stain-random", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability of a strong stain/camera colour change instead of the mild jitter.")
@click.option("--mask", "mask", default="classical", show_default=True, type=click.Choice(["classical", "segmenter"]),
              help="How PBC images are cut: the classical centre-cell mask, or the shipped Mask R-CNN's "
                   "centre instance (the crops the pipeline feeds the classifier; ~0.25 s per image).")
@click.option("--device", default="cpu", show_default=True, callback=device_option,
              help="cpu, or cuda (bf16 autocast).")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0),
              help="Processes that augment batches (a GPU outruns one core); results do not depend on it.")
@click.option("--pack-to", type=click.Path(dir_okay=False, path_type=Path),
              help="Only write the checked, deduped, split train/val crops to this pack (.npz) and stop.")
@click.option("--packed", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Train from a pack made by --pack-to (a machine without the raw data).")
def classifier(data, pbc, out, epochs, size, backbone, batch_size, lr, stain, seed, cache, threads, resume, init,
               low_res, stain_random, mask, device, workers, pack_to, packed):
    """Train the cell classifier and write a bundle of kind "classifier"."""
    from ..errors import InputError
    from ..train.classification import ClassifierConfig, prepare_data, train_classifier

    if pack_to is None and out is None:
        raise InputError("pass --out BUNDLE (or --pack-to FILE to only pack the data)")
    if size is None:
        from ..data.pack import read_meta

        size = int(read_meta(packed)["size"]) if packed is not None else 112
    cfg = ClassifierConfig(out=out or Path("unused"), data=data, pbc=pbc, epochs=epochs, size=size,
                           backbone=backbone, batch_size=batch_size, lr=lr, stain=stain, seed=seed,
                           cache=cache, threads=threads, resume=resume, init=init, low_res=low_res,
                           stain_random=stain_random, device=device, workers=workers, packed=packed,
                           mask=mask)
    if pack_to is not None:
        from ..data.pack import write_pack

        if stain != "none" or packed is not None:
            raise InputError("--pack-to packs the crops as cut from --pbc/--data: drop --stain and --packed")
        path = write_pack(pack_to, prepare_data(cfg), size, seed, cfg.fractions)
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return
    path = train_classifier(cfg)
    click.echo(f"wrote {path}")
