"""``cvat-tools train classifier``: fine-tune EfficientNet-Lite on masked single-cell crops."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("classifier")
@click.option("--data", "data", type=click.Path(path_type=Path), help="Crops folder: DIR/<class>/*.png|jpg.")
@click.option("--pbc", type=click.Path(path_type=Path), help="The PBC folder (fine labels from file names).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(1))
@click.option("--size", default=112, show_default=True, type=click.IntRange(32, 512), help="Input size (px).")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              type=click.Choice(["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(2))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--stain", default="none", show_default=True, type=click.Choice(["none", "reinhard"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--cache", type=click.Path(path_type=Path), help="Crop cache .npz (made once, then reused).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue from OUT.work/last.pt.")
@click.option("--init", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Start from this classifier bundle (same labels; a larger --size fine-tunes it).")
def classifier(data, pbc, out, epochs, size, backbone, batch_size, lr, stain, seed, cache, threads, resume, init):
    """Train the cell classifier and write a bundle of kind "classifier"."""
    from ..train.classification import ClassifierConfig, train_classifier

    cfg = ClassifierConfig(out=out, data=data, pbc=pbc, epochs=epochs, size=size, backbone=backbone,
                           batch_size=batch_size, lr=lr, stain=stain, seed=seed, cache=cache,
                           threads=threads, resume=resume, init=init)
    path = train_classifier(cfg)
    click.echo(f"wrote {path}")
