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
from .errors import CvatToolsError
from .formats.annotations import Instance
from .formats.masks import mask_to_full, polygon_points
from .frames import frame_from_pil, is_blank, to_frame
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


SHAPE_TYPES = ("mask", "polygon")


def shape_type_for(task_labels: list[tuple[str, str]], conv_mask_to_poly: bool | None,
                   allow_unmatched_labels: bool = False, task: str = "the task") -> bool:
    """``conv_mask_to_poly`` that the task's labels ((name, type) pairs) accept, or a
    CvatToolsError naming the fix, before any frame is processed.

    cvat-sdk refuses a mask label for polygons and a polygon label for masks (BadFunctionError
    at start); here the choice follows the task when the caller did not make one.
    """
    ours = [(name, kind) for name, kind in task_labels if name in LABEL_IDS]
    if not ours:
        raise CvatToolsError(
            f"{task} has none of our labels ({', '.join(label_set.ALL_CLASSES[:3])}, ...); "
            "create its labels from labels.json (written by cvat-tools predict)")
    missing = [name for name in LABEL_IDS if name not in dict(ours)]
    if missing and not allow_unmatched_labels:
        raise CvatToolsError(
            f"{task} lacks our labels {missing[:4]}{'...' if len(missing) > 4 else ''}; add them "
            "(labels.json from cvat-tools predict) or pass --allow-unmatched-labels")
    wrong = sorted({f"{name!r} ({kind})" for name, kind in ours
                    if kind not in (*SHAPE_TYPES, "any")})
    if wrong:
        raise CvatToolsError(
            f"{task}: labels {', '.join(wrong[:3])} cannot hold cell outlines; change their type "
            "to mask, polygon or any in CVAT")
    kinds = {kind for _, kind in ours if kind != "any"}
    if kinds == {"mask", "polygon"}:
        raise CvatToolsError(
            f"{task} mixes mask and polygon labels; give our labels one type (mask, polygon "
            "or any) in CVAT")
    if kinds == {"polygon"}:
        if conv_mask_to_poly is False:
            raise CvatToolsError(f"{task}'s labels are polygons: drop --no-conv-mask-to-poly "
                                 "(or change the labels' type to mask or any)")
        return True
    if kinds == {"mask"}:
        if conv_mask_to_poly:
            raise CvatToolsError(f"{task}'s labels are masks: drop --conv-mask-to-poly "
                                 "(or change the labels' type to polygon or any)")
        return False
    return bool(conv_mask_to_poly)


class WbcDetectionFunction:
    """The DetectionFunction protocol: ``spec`` + ``detect(context, image)``."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.spec = function_spec()

    def detect(self, context: Any, image: PIL.Image.Image) -> list[models.LabeledShapeRequest]:
        frame = frame_from_pil(image)  # over the pixel limit: downscaled, not refused
        rgb, width, height = frame.image, frame.width, frame.height  # shapes live on the frame
        threshold = context.conf_threshold
        if threshold is None:
            threshold = DEFAULT_THRESHOLD
        if is_blank(rgb):  # segmenters answer a black frame with one frame-sized "cell"
            return []
        instances = to_frame(self.pipeline.run(rgb, threshold=float(threshold)), frame)
        return [
            self._shape(inst, width, height, bool(context.conv_mask_to_poly))
            for inst in instances
            # a segmentation-only "wbc" (or a foreign model's label) has no label in the spec
            if inst.label in LABEL_IDS
        ]

    @staticmethod
    def _shape(inst: Instance, width: int, height: int, as_polygon: bool) -> models.LabeledShapeRequest:
        label_id = LABEL_IDS[inst.label]
        attributes = [
            models.AttributeValRequest(spec_id=ATTRIBUTE_IDS[name], value=value)
            for name, value in inst.attributes.items()
        ]
        if as_polygon:
            return cvataa.polygon(label_id, polygon_points(inst.geometry, width, height),
                                  attributes=attributes)
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
    same rules as ``cvat-tools predict`` and the Nuclio function); ``segmenter="classical"``
    asks for the watershed segmenter. ``device``: cpu, cuda (CPU with a warning when no GPU
    is visible) or cuda! (fail without one). ``cell_size`` (typical WBC diameter, px) or
    ``um_per_px`` fix the scale; else it is estimated per frame.
    """
    import logging

    from .scale import parse_scale_value
    from .serverless import check_labels, resolve_device

    device = resolve_device(device, logging.getLogger("cvat_tools").warning)
    pipeline = Pipeline.load(
        segmenter=Path(segmenter) if segmenter else None,
        classifier=Path(classifier) if classifier else None,
        refiner=Path(refiner) if refiner else None,
        weights=Path(weights) if weights else None,
        device=device,
        cell_size=parse_scale_value("cell_size", cell_size),
        um_per_px=parse_scale_value("um_per_px", um_per_px),
    )
    check_labels(pipeline)
    return WbcDetectionFunction(pipeline)
