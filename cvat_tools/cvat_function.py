"""cvat-sdk auto-annotation function over :class:`~cvat_tools.pipeline.Pipeline`.

    cvat-cli --server-host URL --auth USER task auto-annotate TASK_ID \\
        --function-module cvat_tools.cvat_function [-p weights=str:DIR] [-p device=str:cuda] \\
        [-p cell_size=float:150] [-p um_per_px=float:0.1] \\
        [--conf-threshold 0.5] [--conv-mask-to-poly] [--clear-existing]

or from Python / ``cvat-tools annotate``:
``cvat_sdk.auto_annotation.annotate_task(client, task_id, create())``.

It follows ``cvat_sdk.auto_annotation.interface.DetectionFunction``: ``spec`` declares every
label of labels.ALL_CLASSES as a mask label with the attributes of
:func:`cvat_tools.pipeline.attribute_specs`; ``detect`` returns one mask shape per cell
(``cvat_sdk.masks.encode_mask``), or a polygon when the caller asks ``conv_mask_to_poly``, and
keeps only cells whose detection score is >= ``context.conf_threshold``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cvat_sdk.auto_annotation as cvataa
import cvat_sdk.models as models
import PIL.Image
from cvat_sdk.masks import encode_mask

from . import labels as label_set
from .formats.annotations import Instance
from .formats.masks import mask_to_full
from .imaging import pil_to_rgb
from .pipeline import Pipeline, attribute_specs

DEFAULT_THRESHOLD = 0.5  # when the caller gives no conf_threshold

LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(label_set.ALL_CLASSES)}
ATTRIBUTE_IDS: dict[str, int] = {spec.name: i for i, spec in enumerate(attribute_specs())}


def sdk_attribute_specs() -> list[models.AttributeRequest]:
    """attribute_specs() as cvat-sdk attribute requests (ids = position)."""
    out = []
    for spec in attribute_specs():
        spec_id = ATTRIBUTE_IDS[spec.name]
        if spec.input_type == "checkbox":
            out.append(cvataa.checkbox_attribute_spec(spec.name, spec_id,
                                                      default_value=spec.default))
        else:
            out.append(cvataa.attribute_spec(spec.name, spec_id, spec.input_type,
                                             list(spec.values), default_value=spec.default))
    return out


def function_spec() -> cvataa.DetectionFunctionSpec:
    """Every label of labels.ALL_CLASSES, type mask, with our attributes (validated by the SDK)."""
    return cvataa.DetectionFunctionSpec(labels=[
        cvataa.label_spec(name, label_id, type="mask", attributes=sdk_attribute_specs())
        for name, label_id in LABEL_IDS.items()
    ])


class WbcDetectionFunction:
    """The DetectionFunction protocol: ``spec`` + ``detect(context, image)``."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.spec = function_spec()

    def detect(self, context: Any, image: PIL.Image.Image) -> list[models.LabeledShapeRequest]:
        rgb = pil_to_rgb(image)
        height, width = rgb.shape[:2]
        threshold = context.conf_threshold
        if threshold is None:
            threshold = DEFAULT_THRESHOLD
        instances = self.pipeline.run(rgb, threshold=float(threshold))
        return [
            self._shape(inst, width, height, bool(context.conv_mask_to_poly))
            for inst in instances
            if inst.label in LABEL_IDS  # a segmentation-only "wbc" has no CVAT label here
        ]

    @staticmethod
    def _shape(inst: Instance, width: int, height: int, as_polygon: bool) -> models.LabeledShapeRequest:
        from .serverless import polygon_points

        label_id = LABEL_IDS[inst.label]
        attributes = [
            models.AttributeValRequest(spec_id=ATTRIBUTE_IDS[name], value=value)
            for name, value in inst.attributes.items()
        ]
        if as_polygon:
            return cvataa.polygon(label_id, polygon_points(inst.geometry), attributes=attributes)
        full = mask_to_full(inst.geometry, width, height)
        return cvataa.mask(label_id, encode_mask(full), attributes=attributes)


def create(
    weights: str | None = None,
    segmenter: str | None = None,
    classifier: str | None = None,
    refiner: str | None = None,
    device: str = "cpu",
    cell_size: float | str | None = None,
    um_per_px: float | str | None = None,
) -> WbcDetectionFunction:
    """Factory cvat-cli calls with the ``-p NAME=str:VALUE`` parameters.

    Models: explicit bundle paths, else ``weights/<kind>/``, else the shipped bundles (the
    same rules as ``cvat-tools predict`` and the Nuclio function). ``cell_size`` (typical WBC
    diameter, px) or ``um_per_px`` fix the scale; else it is estimated per frame.
    """
    from .scale import parse_scale_value
    pipeline = Pipeline.load(
        segmenter=Path(segmenter) if segmenter else None,
        classifier=Path(classifier) if classifier else None,
        refiner=Path(refiner) if refiner else None,
        weights=Path(weights) if weights else None,
        device=device,
        cell_size=parse_scale_value("cell_size", cell_size),
        um_per_px=parse_scale_value("um_per_px", um_per_px),
    )
    return WbcDetectionFunction(pipeline)
