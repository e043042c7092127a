"""CVAT's Nuclio detector contract over :class:`~cvat_tools.pipeline.Pipeline`.

``serverless/pytorch/cvat_tools/wbc/nuclio/main.py`` is a two-line shim over
:func:`init_context` and :func:`handler` here, so the contract is importable and tested
without Nuclio.

Request (what ``cvat/apps/lambda_manager/views.py::LambdaFunction.invoke`` posts to a
``detector``): ``{"image": <base64 of the frame>, "threshold": <float, optional>}``.

Response: a JSON list, one item per cell, in the shape CVAT's mask detectors return
(``serverless/openvino/omz/intel/semantic-segmentation-adas-0001/nuclio/model_handler.py``,
``serverless/pytorch/ultralytics/yolov8-segment/nuclio/main.py``)::

    {"label": "neutrophil", "type": "mask", "confidence": "0.93",
     "points": [x0, y0, x1, y1, ...],          # polygon: used when the user ticks
                                               # "convert masks to polygons"
     "mask": [0, 1, 1, ..., xtl, ytl, xbr, ybr],  # flat crop bitmap + inclusive box
     "attributes": [{"name": "classifier", "value": "neutrophil"}, ...]}

CVAT's lambda manager (``LambdaFunction.invoke``, and ``LambdaJob`` for automatic annotation
of a task) maps each item's label through the task's labels, keeps an attribute only when the
function's ``spec`` declares it and its value passes CVAT's check (numbers: an integer within
the declared range and step; checkboxes: "true"/"false"; select: a declared value), then saves
``mask`` (run-length encoding ``mask[:-4]`` and keeping ``mask[-4:]`` as the box) or, when the
user asks to convert masks to polygons, ``points``. tests/test_cvat_replay.py replays these
rules on real responses.

CVAT aborts the automatic annotation of a whole task on the first non-2xx answer, so the
handler answers 200 for every decodable image: a frame over the pixel limit is downscaled for
inference (the log says so) and the masks are placed back on the frame; a frame whose
inference fails answers an empty list and logs the error (``CVAT_TOOLS_STRICT=1``: 500
instead, for debugging). Only a body that is not a decodable image gets 400 with a one-line
reason. Coordinates are clamped to the frame, and the response is bounded
(:data:`MAX_INSTANCES` cells, :data:`MAX_MASK_PIXELS` mask pixels in all).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

import numpy as np

from .errors import BundleError, CvatToolsError, InputError
from .formats.annotations import Instance, Mask
from .formats.masks import mask_tight, polygon_points, serverless_mask
from .function_spec import spec_labels
from .guarded import load_json
from .pipeline import Pipeline

# Environment of the function container (function.yaml ``env``; tests set them too).
ENV_WEIGHTS = "CVAT_TOOLS_WEIGHTS"  # folder with segmenter/ classifier/ refiner/ bundles
ENV_SEGMENTER = "CVAT_TOOLS_SEGMENTER"
ENV_CLASSIFIER = "CVAT_TOOLS_CLASSIFIER"
ENV_REFINER = "CVAT_TOOLS_REFINER"
ENV_DEVICE = "CVAT_TOOLS_DEVICE"  # cpu, cuda (CPU with a warning when no GPU), cuda! (insist)
ENV_STRICT = "CVAT_TOOLS_STRICT"  # 1: inference failures answer 500 instead of an empty list
ENV_CELL_SIZE = "CVAT_TOOLS_CELL_SIZE"  # typical WBC diameter, px; empty: estimated per frame
ENV_UM_PER_PX = "CVAT_TOOLS_UM_PER_PX"  # microns per pixel; empty: estimated per frame
DEFAULT_THRESHOLD = 0.5
# Response bounds: a field holds tens of white cells; these only stop pathological frames
# (a 62 KB black 64 MP PNG once gave a 57 MB answer). Each mask pixel costs ~3 bytes of JSON.
MAX_INSTANCES = 300
MAX_MASK_PIXELS = 8_000_000
# base64 of the 100 MB image limit plus the JSON around it
MAX_REQUEST_BYTES = 140 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Instances -> CVAT detector response


def clip_mask(mask: Mask, width: int, height: int) -> Mask | None:
    """The part of ``mask`` inside a width x height image, tight; None when nothing is left."""
    x0, y0 = max(mask.left, 0), max(mask.top, 0)
    x1, y1 = min(mask.left + mask.width, width), min(mask.top + mask.height, height)
    if x1 <= x0 or y1 <= y0:
        return None
    bitmap = np.asarray(mask.bitmap, dtype=bool)[y0 - mask.top:y1 - mask.top,
                                                 x0 - mask.left:x1 - mask.left]
    return mask_tight(Mask(bitmap, x0, y0))


def to_detector_item(instance: Instance, width: int | None = None,
                     height: int | None = None) -> dict[str, Any]:
    """One instance as an item of CVAT's detector response (clamped to the image if sized)."""
    mask = instance.geometry
    if not isinstance(mask, Mask):
        raise TypeError(f"pipeline instances carry Mask geometry, got {type(mask).__name__}")
    if width is not None and height is not None:
        tight = clip_mask(mask, width, height)
        if tight is None:
            raise ValueError("instance mask lies outside the image")
    else:
        tight = mask_tight(mask) or mask
    return {
        "label": instance.label,
        "type": "mask",
        # CVAT's functions send str(float(score)); the lambda manager passes it through.
        "confidence": str(round(float(instance.score or 0.0), 4)),
        "points": polygon_points(tight, width, height),
        "mask": serverless_mask(tight),
        "attributes": [{"name": k, "value": v} for k, v in instance.attributes.items()],
    }


# ---------------------------------------------------------------------------------------------
# Request parsing


class BadRequest(InputError):
    """The request itself is wrong: HTTP 400."""


def parse_request(body: Any) -> tuple[bytes, float]:
    """(image bytes, threshold) of a detector request body, or BadRequest saying why."""
    if isinstance(body, (bytes, bytearray, str)):
        # Nuclio hands the raw bytes over when its own JSON decoding failed (deep nesting
        # makes json.loads recurse until RecursionError): the guarded loader bounds both.
        try:
            body = load_json(bytes(body) if not isinstance(body, str) else body,
                             "request body", max_bytes=MAX_REQUEST_BYTES)
        except InputError as exc:
            reason = str(exc).removeprefix("request body: ")
            if reason.startswith("not valid JSON"):
                message = "request body is not JSON" + reason.removeprefix("not valid JSON")
            else:  # nested too deeply, not UTF-8, over the size limit
                message = f"request body refused: {reason}"
            raise BadRequest(f'{message[:200]}; send {{"image": "<base64>"}}') from None
    if not isinstance(body, dict):
        raise BadRequest('request body must be a JSON object {"image": "<base64>"}')
    encoded = body.get("image")
    if not isinstance(encoded, str) or not encoded:
        raise BadRequest('missing "image": send the frame as a base64 string')
    if "," in encoded[:100] and encoded.startswith("data:"):
        encoded = encoded.split(",", 1)[1]  # tolerate a data: URL
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest('"image" is not valid base64') from None
    threshold = body.get("threshold", DEFAULT_THRESHOLD)
    try:
        threshold = float(threshold if threshold is not None else DEFAULT_THRESHOLD)
    except (TypeError, ValueError):
        raise BadRequest(f'"threshold" must be a number in [0, 1], got {threshold!r}') from None
    if not 0.0 <= threshold <= 1.0:
        raise BadRequest(f'"threshold" must be in [0, 1], got {threshold}')
    return data, threshold


# ---------------------------------------------------------------------------------------------
# Nuclio entry points


def resolve_device(requested: str | None, warn: Any = None) -> str:
    """The torch device for ``requested`` (ENV_DEVICE): "cuda" without a visible GPU falls back
    to "cpu" with a warning (a GPU deployment on a CPU node still answers); "cuda!" insists
    and fails with a BundleError; empty: cuda when available."""
    requested = (requested or "").strip().lower()
    insist = requested.endswith("!")
    requested = requested.rstrip("!")
    if requested in ("", "auto"):
        return _default_device()
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if _cuda_available():
            return requested
        if insist:
            raise BundleError(f"{ENV_DEVICE}={requested}! but no GPU is visible to this "
                              "container; check the GPU resources, or use cpu")
        if warn is not None:
            warn(f"{ENV_DEVICE}={requested} but no GPU is visible: running on CPU "
                 f"(set {ENV_DEVICE}=cuda! to fail instead)")
        return "cpu"
    raise BundleError(f"{ENV_DEVICE}={requested!r}: use cpu, cuda or cuda! (insist on a GPU)")


def load_pipeline_from_env(warn: Any = None) -> Pipeline:
    """The Pipeline as the function's environment describes it (see the ENV_* names)."""
    from .scale import parse_scale_value

    device = resolve_device(os.environ.get(ENV_DEVICE), warn)
    pipeline = Pipeline.load(
        cell_size=parse_scale_value(ENV_CELL_SIZE, os.environ.get(ENV_CELL_SIZE)),
        um_per_px=parse_scale_value(ENV_UM_PER_PX, os.environ.get(ENV_UM_PER_PX)),
        segmenter=os.environ.get(ENV_SEGMENTER) or None,
        classifier=os.environ.get(ENV_CLASSIFIER) or None,
        refiner=os.environ.get(ENV_REFINER) or None,
        weights=os.environ.get(ENV_WEIGHTS) or None,
        device=device,
    )
    check_labels(pipeline)
    return pipeline


def check_labels(pipeline: Pipeline) -> None:
    """Refuse models that could answer a label the function's spec does not declare."""
    spec = spec_labels()
    for model in (pipeline.classifier, pipeline.refiner):
        labels = getattr(model, "labels", None)
        if labels is None:
            continue
        foreign = [lab for lab in labels if lab not in spec]
        if foreign:
            raise BundleError(f"{type(model).__name__} labels {foreign} are not in the "
                              "function's spec (labels.ALL_CLASSES); deploy a bundle "
                              "trained for this label set")


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def _default_device() -> str:
    return "cuda" if _cuda_available() else "cpu"


def init_context(context: Any) -> None:
    """Load the models once per worker (Nuclio calls this before the first event)."""
    context.logger.info("cvat-tools WBC: loading models")
    pipeline = load_pipeline_from_env(warn=context.logger.warn)
    context.user_data.pipeline = pipeline
    info = pipeline.info
    context.logger.info(
        f"cvat-tools WBC ready: segmenter={info.segmenter} classifier={info.classifier} "
        f"refiner={info.refiner}"
    )


def _response(context: Any, body: Any, status: int) -> Any:
    if status == 200:
        return context.Response(body=json.dumps(body), headers={},
                                content_type="application/json", status_code=200)
    return context.Response(body=json.dumps({"error": body}), headers={},
                            content_type="application/json", status_code=status)


def strict() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in ("1", "true", "yes")


def bounded_items(instances: list[Instance], width: int, height: int,
                  log: Any = None) -> list[dict[str, Any]]:
    """Response items: labels of the spec only, clamped to the image, best score first until
    MAX_INSTANCES items or MAX_MASK_PIXELS mask pixels; what is left out is logged."""
    spec = spec_labels()
    foreign = [inst.label for inst in instances if inst.label not in spec]
    ranked = sorted((inst for inst in instances if inst.label in spec),
                    key=lambda inst: -float(inst.score or 0.0))
    items: list[dict[str, Any]] = []
    pixels = capped = 0
    for inst in ranked:
        clipped = clip_mask(inst.geometry, width, height)
        if clipped is None:
            continue
        area = clipped.width * clipped.height
        if len(items) >= MAX_INSTANCES or pixels + area > MAX_MASK_PIXELS:
            capped += 1
            continue
        pixels += area
        items.append(to_detector_item(inst, width, height))
    if log is not None and foreign:
        log(f"dropped {len(foreign)} cells with labels outside the spec: {sorted(set(foreign))[:5]}")
    if log is not None and capped:
        log(f"response capped: {capped} of {len(ranked)} cells left out (limits: "
            f"{MAX_INSTANCES} cells, {MAX_MASK_PIXELS} mask pixels)")
    return items


def handler(context: Any, event: Any) -> Any:
    """One detector call: decode, run the pipeline, answer CVAT's response list."""
    from .frames import decode_frame, is_blank, to_frame

    try:
        data, threshold = parse_request(event.body)
        frame = decode_frame(data, name="request image")
    except CvatToolsError as exc:
        context.logger.warn(f"bad request: {exc}")
        return _response(context, str(exc), 400)
    if frame.downscaled:
        h, w = frame.image.shape[:2]
        context.logger.warn(f"frame {frame.width}x{frame.height} is over the pixel limit: "
                            f"downscaled to {w}x{h} for inference, masks placed back")
    try:
        if is_blank(frame.image):
            context.logger.info("blank frame (no structure): no cells")
            return _response(context, [], 200)
        instances = context.user_data.pipeline.run(frame.image, threshold=threshold)
        items = bounded_items(to_frame(instances, frame), frame.width, frame.height,
                              context.logger.warn)
        scale = context.user_data.pipeline.last_scale
        if scale is not None and scale.grayscale and not scale.empty:
            context.logger.warn("grayscale frame (R = G = B): the segmenter was trained on "
                                "stained colour smears; cells may be missed")
    except Exception as exc:  # never let a traceback reach CVAT; log it here
        import traceback

        context.logger.error(f"inference failed: {exc!r}\n{traceback.format_exc()}")
        if strict():
            status = 400 if isinstance(exc, CvatToolsError) else 500
            return _response(context, f"inference failed ({type(exc).__name__}); see the "
                                      "function log", status)
        # one failed frame must not abort CVAT's annotation of the whole task
        context.logger.warn(f"answering no cells for this frame ({ENV_STRICT}=1 to fail instead)")
        items = []
    context.logger.info(f"{len(items)} cells at threshold {threshold}")
    return _response(context, items, 200)
