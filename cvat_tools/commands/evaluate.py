"""``cvat-tools evaluate segmenter|classifier|refiner``."""
import click

from ..cli import LazyGroup


@click.group(cls=LazyGroup, lazy={
    "segmenter": "evaluate_segmenter:segmenter",
    "classifier": "evaluate_classifier:classifier",
    "refiner": "evaluate_classifier:refiner",
})
def evaluate():
    """Score a model on held-out data: metrics printed, plots written."""
