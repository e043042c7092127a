"""Explain every cell the Pipeline finds in an image: its instance (the same label and
attributes ``predict`` gives), the crops each model received and each model's heat map.

The explainer's forward pass is the prediction: the rule decides from those answers
(:meth:`Pipeline.decide`), so explaining costs the heat maps and panels, not a second run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..crops import cell_crop
from ..errors import BundleError
from ..formats.annotations import Instance
from .gradcam import CellExplanation, Explainer, mass_inside
from .panels import Tile, heat_overlay, mask_tile, outline, panel, top_lines


@dataclass
class ModelAnswer:
    name: str  # "classifier" or "refiner"
    explanation: CellExplanation
    in_mask: float  # fraction of the heat map's mass inside the cell mask


@dataclass
class ExplainedCell:
    index: int
    instance: Instance
    crop: np.ndarray  # the classifier's input crop (RGB uint8)
    mask: np.ndarray  # bool, the cell's mask in that crop's pixels
    answers: list[ModelAnswer]


def explainers(pipeline, method: str = "gradcam") -> list[tuple[str, Explainer]]:
    """(name, Explainer) for the pipeline's classifier and refiner (if any); a pipeline
    without a classifier (segmentation only) is refused: it gives no answer to explain."""
    if pipeline.classifier is None:
        raise BundleError(
            "no classifier: these weights hold a segmenter only, which outlines cells but names "
            "no class, and Grad-CAM explains a class answer; pass --classifier BUNDLE (made by "
            "'cvat-tools train classifier') or use the shipped weights")
    found = [("classifier", Explainer(pipeline.classifier, method))]
    if pipeline.refiner is not None:
        found.append(("refiner", Explainer(pipeline.refiner, method)))
    return found


def crop_mask(detection, size: int) -> np.ndarray:
    """The detection's mask in the pixels of its crop: the mask itself cut by cell_crop, so it
    lines up with the crop exactly."""
    bitmap = np.asarray(detection.mask.bitmap, bool)
    as_image = np.repeat(bitmap[..., None].astype(np.uint8) * 255, 3, axis=2)
    return cell_crop(as_image, bitmap, size=size, background=(0, 0, 0))[..., 0] >= 128


def explain_image(pipeline, models: list[tuple[str, Explainer]], image: np.ndarray,
                  threshold: float = 0.5) -> list[ExplainedCell]:
    """Every detected cell of ``image`` with its instance and each model's heat map
    (empty list: no cells at this threshold)."""
    detections = pipeline.detect(image, threshold)
    if not detections:
        return []
    per_model: list[tuple[str, list[CellExplanation], list[np.ndarray]]] = []
    crops: list[np.ndarray] = []
    for name, explainer in models:
        size = explainer.model.input_size
        crops = pipeline.crops(image, detections, size)
        masks = [crop_mask(d, size) for d in detections]
        per_model.append((name, explainer.explain(crops), masks))
        if name == "classifier":
            clf_crops, clf_masks = crops, masks
    clf = per_model[0][1]
    ref = per_model[1][1] if len(per_model) > 1 else [None] * len(detections)
    instances = pipeline.decide(detections, [e.prediction for e in clf],
                                [e.prediction if e else None for e in ref])
    cells = []
    for i, instance in enumerate(instances):
        answers = [ModelAnswer(name, exps[i], mass_inside(exps[i].heat, masks[i]))
                   for name, exps, masks in per_model]
        cells.append(ExplainedCell(i, instance, clf_crops[i], clf_masks[i], answers))
    return cells


def cell_panel(cell: ExplainedCell) -> np.ndarray:
    """[crop | mask | heat per model] with the final label and each model's top-3 scores."""
    inst = cell.instance
    review = " (review)" if inst.attributes.get("needs_review") == "true" else ""
    tiles = [
        Tile(cell.crop, [f"cell {cell.index}", f"{inst.label[:16]}{review}",
                         f"detection {inst.score:.2f}"]),
        Tile(mask_tile(cell.mask), ["mask", "heat in mask:"] +
             [f"{a.name[:3]} {100 * a.in_mask:.0f}%" for a in cell.answers]),
    ]
    for answer in cell.answers:
        crop = cell.crop
        heat = answer.explanation.heat
        tiles.append(Tile(outline(heat_overlay(crop, heat), _resized(cell.mask, crop.shape[0])),
                          top_lines(answer.name, answer.explanation.prediction)))
    return panel(tiles)


def _resized(mask: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if mask.shape[0] == size:
        return mask
    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


def cell_record(cell: ExplainedCell, panel_name: str) -> dict:
    """What explain.json says of one cell."""
    inst = cell.instance
    mask = inst.geometry
    return {
        "cell": cell.index,
        "label": inst.label,
        "detection_score": round(float(inst.score), 4),
        "box": [int(mask.left), int(mask.top), int(mask.width), int(mask.height)],
        "attributes": dict(inst.attributes),
        "panel": panel_name,
        "models": {a.name: {
            "label": a.explanation.prediction.label,
            "top3": [[lab, round(s, 4)] for lab, s in a.explanation.prediction.top(3)],
            "heat_in_mask": round(a.in_mask, 4),
        } for a in cell.answers},
    }
