"""``cvat-tools evaluate segmenter|classifier|refiner|embedding``."""
import click

from ..cli import LazyGroup


@click.group(cls=LazyGroup, lazy={
    "segmenter": "evaluate_segmenter:segmenter",
    "classifier": "evaluate_classifier:classifier",
    "refiner": "evaluate_classifier:refiner",
    "embedding": "evaluate_embedding:embedding",
})
def evaluate():
    """Score a model on held-out data: metrics printed, plots written."""
