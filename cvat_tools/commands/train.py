"""``cvat-tools train segmenter|classifier|refiner``."""
import click

from ..cli import LazyGroup


@click.group(cls=LazyGroup, lazy={
    "segmenter": "train_segmenter:segmenter",
    "classifier": "train_classifier:classifier",
    "refiner": "train_refiner:refiner",
})
def train():
    """Train a model and write it as a bundle (weights + manifest)."""
