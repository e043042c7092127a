"""Calling the Nuclio function as CVAT does, for the serving tests: load main.py, build events,
read answers, check response items against CVAT's rules. Fixtures over these live in conftest."""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cvat_tools import function_spec
from cvat_tools.formats.annotations import Mask
from cvat_tools.formats.masks import mask_to_full, polygon_to_mask, serverless_mask_decode
from pipeline_fakes import iou

FUNCTION_DIR = Path(__file__).resolve().parents[1] / "serverless" / "pytorch" / "cvat_tools" / "wbc" / "nuclio"


def load_main(name):
    spec = importlib.util.spec_from_file_location(name, FUNCTION_DIR / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the platform finds init_context through the module
    spec.loader.exec_module(module)
    return module


def event(body):
    import nuclio_sdk

    return nuclio_sdk.Event(body=body, content_type="application/json", method="POST")


def call(nuclio, body):
    platform, handler = nuclio
    response = platform.call_handler(handler, event(body))
    return response.status_code, json.loads(response.body)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def handler_pipeline(nuclio):
    """The Pipeline that main.py's init_context loaded."""
    platform, handler = nuclio
    return platform._get_handler_context(handler).user_data.pipeline


def fake_instance(bitmap, left=0, top=0, label="lymphocyte", score=0.9):
    """An Instance as Pipeline._instance makes it, from a bitmap (no models)."""
    from cvat_tools.pipeline import Pipeline
    from pipeline_fakes import FakeModel

    fake = Pipeline(None, FakeModel([(label, 0.9)]))
    decision = type("D", (), {"label": label, "classifier_label": label, "classifier_score": 0.9,
                              "refiner_label": None, "refiner_score": None, "score": 0.9})()
    det = type("Det", (), {"mask": Mask(np.asarray(bitmap, bool), left, top), "score": score})()
    return fake._instance(det, decision)


def check_item(item, width, height):
    """Every field of one response item against CVAT's rules (lambda_manager/views.py)."""
    spec = {entry["name"]: entry for entry in function_spec.function_spec()}
    assert set(item) == {"label", "type", "confidence", "points", "mask", "attributes"}
    assert item["label"] in spec and item["type"] == "mask"
    assert 0.0 <= float(item["confidence"]) <= 1.0
    declared = {a["name"]: a for a in spec[item["label"]]["attributes"]}
    names = [a["name"] for a in item["attributes"]]
    assert len(names) == len(set(names)) and set(names) == set(declared)
    for attr in item["attributes"]:
        decl, value = declared[attr["name"]], attr["value"]
        assert isinstance(value, str)
        if decl["input_type"] == "select":
            assert value in decl["values"]
        elif decl["input_type"] == "number":  # CVAT: value.isnumeric(); cvat-sdk: int(value)
            lo, hi, _ = map(int, decl["values"])
            assert value.isnumeric() and lo <= int(value) <= hi
        elif decl["input_type"] == "checkbox":
            assert value in ("true", "false")
    pts = np.asarray(item["points"], dtype=float).reshape(-1, 2)
    assert len(pts) >= 3
    assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= width).all()
    assert (pts[:, 1] >= 0).all() and (pts[:, 1] <= height).all()
    mask = serverless_mask_decode(item["mask"])
    *_, xtl, ytl, xbr, ybr = item["mask"]
    assert 0 <= xtl <= xbr < width and 0 <= ytl <= ybr < height
    assert set(item["mask"][:-4]) <= {0, 1}
    full = mask_to_full(mask, width, height)
    assert full.any()
    # the polygon outlines the same cell as the mask
    assert iou(polygon_to_mask(pts, height, width), full) > 0.8
    return full


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose header claims width x height (3.6 GP): refused before decoding."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("1", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)
