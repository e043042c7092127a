"""Bundle kind -> loader: how :meth:`Pipeline.load <cvat_tools.pipeline.Pipeline.load>` and the
commands turn a bundle folder into a model. One place knows which class serves which kind."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..bundle import KINDS, shipped_bundle
from ..errors import BundleError
from ..segment.base import Segmenter
from .protocols import CellModel


def load_segmenter(bundle: str | Path | None = None, device: str = "cpu") -> Segmenter:
    """The segmenter of ``bundle``; with None, the shipped Mask R-CNN if present, else the
    classical watershed segmenter."""
    if bundle is None:
        bundle = shipped_bundle("segmenter")
        if bundle is None:
            from ..segment.classical import ClassicalSegmenter

            return ClassicalSegmenter()
    from ..segment.maskrcnn import MaskRCNNSegmenter

    return MaskRCNNSegmenter.from_bundle(bundle, device=device)


def load_classifier(bundle: str | Path | None = None, device: str = "cpu") -> CellModel:
    from ..classify.classifier import CellClassifier

    return CellClassifier.from_bundle(bundle, device=device)


def load_refiner(bundle: str | Path | None = None, device: str = "cpu",
                 classifier_labels: list[str] | None = None) -> CellModel:
    """``classifier_labels``: refuse a refiner whose labels the classifier does not have."""
    from ..classify.dann import Refiner

    return Refiner.from_bundle(bundle, device=device, classifier_labels=classifier_labels)


LOADERS: dict[str, Callable[..., Any]] = {
    "segmenter": load_segmenter,
    "classifier": load_classifier,
    "refiner": load_refiner,
}
assert set(LOADERS) == set(KINDS), "every bundle kind needs a loader"


def load_model(kind: str, bundle: str | Path | None, device: str = "cpu", **options: Any) -> Any:
    """The model of a bundle of ``kind`` (None: the shipped one)."""
    loader = LOADERS.get(kind)
    if loader is None:
        raise BundleError(f"no loader for bundle kind {kind!r}; kinds: {', '.join(LOADERS)}")
    return loader(bundle, device=device, **options)
