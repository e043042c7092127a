"""``cvat-tools train segmenter``: train the Mask R-CNN WBC segmenter and write a bundle."""
from __future__ import annotations

import click

from ..devices import device_option
from ..errors import InputError
from .train_recipe import recipe_options, train


@click.command("segmenter")
@click.option("--data", "data", type=click.Path(exists=True, file_okay=False),
              help="training folder: a 'cvat-tools export' COCO folder or the BCCD folder")
@click.option("--out", "out", type=click.Path(), help="bundle folder to write")
@click.option("--split", default=None, help="BCCD folder: the split to train on (train)")
@click.option("--val", "val", default=None, type=click.Path(exists=True, file_okay=False),
              help="folder for model selection (a BCCD folder uses --val-split)")
@click.option("--val-split", default=None, help="split of --val to select on (val); never test")
@click.option("--pseudo-labels", type=click.Path(exists=True, file_okay=False), default=None,
              help="PBC folder: add WBCs of its train split with classical masks (as mosaics)")
@click.option("--mosaics", type=int, default=None, help="pseudo-label mosaics (4 cells each) per epoch")
@click.option("--epochs", type=click.IntRange(1), default=None)
@click.option("--init", "init", type=click.Path(exists=True, file_okay=False), default=None,
              help="fine-tune from this segmenter bundle (e.g. cvat_tools/weights/segmenter)")
@click.option("--negatives", type=int, default=None, help="hard negatives (no WBC) per epoch")
@click.option("--zoomed-cells", type=int, default=None,
              help="pseudo-labelled single cells zoomed to fill the frame, per epoch")
@click.option("--zoom-prob", type=float, default=None,
              help="share of training fields zoomed by zoom_range (0.25x-4x) instead of the x0.75-1.33 jitter")
@click.option("--backbone", default=None, help="efficientnet_lite0 (default), _lite1, _lite2")
@click.option("--architecture", type=click.Choice(["maskrcnn", "resnet50_fpn"]), default=None)
@click.option("--long-side", type=int, default=None, help="working size: the field's long side in px")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
@click.option("--device", default=None, callback=device_option, help="cpu, cuda or cuda:N")
@recipe_options("training/segmenter_base.yaml")
@click.option("--max-train-images", type=int, default=None, hidden=True)
@click.option("--max-val-images", type=int, default=None, hidden=True)
def segmenter(config, **options):
    """Train the WBC segmenter (Mask R-CNN, EfficientNet-Lite + FPN) on COCO or BCCD data."""
    from ..train.recipe import resolve
    from ..train.segmentation import SegTrainConfig, train_segmenter

    cfg = resolve(SegTrainConfig, config, options)
    if cfg.split == "test" or cfg.val_split == "test":
        raise InputError("the test split is for the final score only: train on train, select on val")
    train(train_segmenter, cfg)
