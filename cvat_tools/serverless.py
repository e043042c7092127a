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

``_call_detector`` in the same views.py reads ``anno["mask"]`` (run-length encodes
``points[:-4]`` and keeps ``points[-4:]`` as the box) or, with conv_mask_to_poly,
``anno["points"]``; it keeps an attribute only when the function's ``spec`` declares it
(``func_attributes``) and ``check_attr_value`` accepts the value. Bad requests get HTTP 400
with a one-line reason; unexpected failures get 500 with a short message (the traceback goes
to the function log only).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from . import labels as label_set
from .errors import CvatToolsError, InputError
from .formats.annotations import Instance, Mask
from .formats.masks import mask_tight, mask_to_polygon, serverless_mask
from .pipeline import Pipeline, attribute_specs

# Environment of the function container (function.yaml ``env``; tests set them too).
ENV_WEIGHTS = "CVAT_TOOLS_WEIGHTS"  # folder with segmenter/ classifier/ refiner/ bundles
ENV_SEGMENTER = "CVAT_TOOLS_SEGMENTER"
ENV_CLASSIFIER = "CVAT_TOOLS_CLASSIFIER"
ENV_REFINER = "CVAT_TOOLS_REFINER"
ENV_DEVICE = "CVAT_TOOLS_DEVICE"  # cpu, cuda; default: cuda when available
ENV_CELL_SIZE = "CVAT_TOOLS_CELL_SIZE"  # typical WBC diameter, px; empty: estimated per frame
ENV_UM_PER_PX = "CVAT_TOOLS_UM_PER_PX"  # microns per pixel; empty: estimated per frame
DEFAULT_THRESHOLD = 0.5
POLYGON_TOLERANCE = 1.0  # px; CVAT's own mask functions use 2.5, a cell outline wants detail


# ---------------------------------------------------------------------------------------------
# The function's metadata: generated from labels.py, checked against function.yaml by the tests


def function_spec() -> list[dict[str, Any]]:
    """The ``metadata.annotations.spec`` list: every label, type mask, with our attributes."""
    attributes = [
        {"name": a.name, "input_type": a.input_type, "values": list(a.values)}
        for a in attribute_specs()
    ]
    return [
        {"id": i, "name": name, "type": "mask", "attributes": attributes}
        for i, name in enumerate(label_set.ALL_CLASSES)
    ]


def spec_block(indent: int = 6) -> str:
    """:func:`function_spec` as the YAML literal block body, one label per line."""
    pad = " " * indent
    lines = [pad + "["]
    items = [json.dumps(item, separators=(", ", ": ")) for item in function_spec()]
    for i, item in enumerate(items):
        lines.append(pad + "  " + item + ("," if i < len(items) - 1 else ""))
    lines.append(pad + "]")
    return "\n".join(lines) + "\n"


SPEC_BEGIN = "    spec: |\n"


def write_spec(function_yaml: str | Path) -> bool:
    """Rewrite the ``spec: |`` block of a function.yaml from labels.py; True if it changed."""
    path = Path(function_yaml)
    text = path.read_text()
    start = text.index(SPEC_BEGIN) + len(SPEC_BEGIN)
    end = start
    lines = text[start:].splitlines(keepends=True)
    for line in lines:  # the block ends at the first line indented less than 6 spaces
        if line.strip() and not line.startswith(" " * 6):
            break
        end += len(line)
    new = text[:start] + spec_block() + "\n" + text[end:].lstrip("\n")
    if new != text:
        path.write_text(new)
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Instances -> CVAT detector response


def polygon_points(mask: Mask) -> list[float]:
    """Flat polygon of a mask (>= 3 vertices); its box corners if the outline is degenerate."""
    polygon = mask_to_polygon(mask.bitmap, mask.left, mask.top, tolerance=POLYGON_TOLERANCE,
                              min_area=1)
    if polygon is None or len(polygon) < 3:
        x0, y0 = float(mask.left), float(mask.top)
        x1, y1 = x0 + mask.width, y0 + mask.height
        polygon = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return [round(v, 2) for point in polygon for v in point]


def to_detector_item(instance: Instance) -> dict[str, Any]:
    """One instance as an item of CVAT's detector response."""
    mask = instance.geometry
    if not isinstance(mask, Mask):
        raise TypeError(f"pipeline instances carry Mask geometry, got {type(mask).__name__}")
    tight = mask_tight(mask) or mask
    return {
        "label": instance.label,
        "type": "mask",
        # CVAT's functions send str(float(score)); the lambda manager passes it through.
        "confidence": str(round(float(instance.score or 0.0), 4)),
        "points": polygon_points(tight),
        "mask": serverless_mask(tight),
        "attributes": [{"name": k, "value": v} for k, v in instance.attributes.items()],
    }


# ---------------------------------------------------------------------------------------------
# Request parsing


class BadRequest(InputError):
    """The request itself is wrong: HTTP 400."""


def parse_request(body: Any) -> tuple[bytes, float]:
    """(image bytes, threshold) of a detector request body, or BadRequest saying why."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(bytes(body).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadRequest('request body is not JSON; send {"image": "<base64>"}') from None
    elif isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError:
            raise BadRequest('request body is not JSON; send {"image": "<base64>"}') from None
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


def load_pipeline_from_env() -> Pipeline:
    """The Pipeline as the function's environment describes it (see the ENV_* names)."""
    from .scale import parse_scale_value

    device = os.environ.get(ENV_DEVICE) or _default_device()
    return Pipeline.load(
        cell_size=parse_scale_value(ENV_CELL_SIZE, os.environ.get(ENV_CELL_SIZE)),
        um_per_px=parse_scale_value(ENV_UM_PER_PX, os.environ.get(ENV_UM_PER_PX)),
        segmenter=os.environ.get(ENV_SEGMENTER) or None,
        classifier=os.environ.get(ENV_CLASSIFIER) or None,
        refiner=os.environ.get(ENV_REFINER) or None,
        weights=os.environ.get(ENV_WEIGHTS) or None,
        device=device,
    )


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def init_context(context: Any) -> None:
    """Load the models once per worker (Nuclio calls this before the first event)."""
    context.logger.info("cvat-tools WBC: loading models")
    pipeline = load_pipeline_from_env()
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


def handler(context: Any, event: Any) -> Any:
    """One detector call: decode, run the pipeline, answer CVAT's response list."""
    from .imaging import decode_image

    try:
        data, threshold = parse_request(event.body)
        image = decode_image(data, name="request image")
    except CvatToolsError as exc:
        context.logger.warn(f"bad request: {exc}")
        return _response(context, str(exc), 400)
    try:
        instances = context.user_data.pipeline.run(image, threshold=threshold)
        items = [to_detector_item(inst) for inst in instances]
        scale = context.user_data.pipeline.last_scale
        if scale is not None and scale.grayscale and not scale.empty:
            context.logger.warn("grayscale frame (R = G = B): the segmenter was trained on "
                                "stained colour smears; cells may be missed")
    except CvatToolsError as exc:
        context.logger.warn(f"refused: {exc}")
        return _response(context, str(exc), 400)
    except Exception as exc:  # never let a traceback reach CVAT; log it here
        import traceback

        context.logger.error(f"inference failed: {exc!r}\n{traceback.format_exc()}")
        return _response(context, f"internal error during inference ({type(exc).__name__}); "
                                  "see the function log", 500)
    context.logger.info(f"{len(items)} cells at threshold {threshold}")
    return _response(context, items, 200)


if __name__ == "__main__":  # python -m cvat_tools.serverless FUNCTION_YAML...: refresh spec
    import sys

    for arg in sys.argv[1:] or []:
        changed = write_spec(arg)
        print(f"{arg}: {'updated' if changed else 'up to date'}")
