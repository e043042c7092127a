"""The Nuclio handler under hostile or unlucky frames (issues 19 and 23): CVAT aborts a whole
task on one non-2xx answer, so every decodable frame answers 200, bounded and clamped."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from cvat_tools import imaging, serverless
from cvat_tools.errors import BundleError
from cvat_tools.formats import masks
from cvat_tools.formats.annotations import Mask
from pipeline_fakes import FakeModel
from nuclio_calls import b64, bomb_png, call, check_item, event, fake_instance, handler_pipeline


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_deep_nested_json_is_400_in_one_line(nuclio):
    body = b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, answer = call(nuclio, body)
    assert status == 400
    assert "nested too deeply" in answer["error"] and "\n" not in answer["error"]


def test_header_claiming_gigapixels_is_400(nuclio):
    status, answer = call(nuclio, {"image": b64(bomb_png())})
    assert status == 400 and "decompression bomb" in answer["error"]


def test_frame_over_the_pixel_limit_is_downscaled_and_answered(nuclio, bccd_dir, monkeypatch, caplog):
    monkeypatch.setattr(imaging, "MAX_PIXELS", 100_000)  # the 640x480 field is 3x over
    data = (bccd_dir / "images" / "BloodImage_00002.jpg").read_bytes()
    status, items = call(nuclio, {"image": b64(data)})
    assert status == 200 and len(items) >= 1
    fulls = [check_item(item, 640, 480) for item in items]  # on the frame's own grid
    gt = np.asarray(Image.open(bccd_dir / "masks" / "BloodImage_00002.png")) > 0
    best = max(np.logical_and(f, gt).sum() / np.logical_or(f, gt).sum() for f in fulls)
    assert best > 0.4
    assert "downscaled to" in caplog.text and "640x480" in caplog.text


def test_black_64_mp_png_answers_an_empty_list_quickly(nuclio):
    data = _png(Image.new("L", (8000, 8000)))  # ~60 KB on the wire
    assert len(data) < 200_000
    start = time.monotonic()
    status, items = call(nuclio, {"image": b64(data)})
    assert status == 200 and items == []
    assert time.monotonic() - start < 20


def test_response_is_capped(nuclio, monkeypatch, caplog):
    cells = [fake_instance(np.ones((8, 8)), left=10 * (i % 30), top=10 * (i // 30), score=0.99 - i / 1000)
             for i in range(60)]
    monkeypatch.setattr(handler_pipeline(nuclio), "run", lambda image, threshold=0.5: list(cells))
    monkeypatch.setattr(serverless, "MAX_INSTANCES", 25)
    status, items = call(nuclio, {"image": b64(_png(Image.effect_noise((320, 240), 40).convert("RGB")))})
    assert status == 200 and len(items) == 25
    assert [float(i["confidence"]) for i in items] == sorted((float(i["confidence"]) for i in items), reverse=True)
    assert "response capped: 35 of 60" in caplog.text
    monkeypatch.setattr(serverless, "MAX_INSTANCES", 1000)
    monkeypatch.setattr(serverless, "MAX_MASK_PIXELS", 64 * 10)
    status, items = call(nuclio, {"image": b64(_png(Image.effect_noise((320, 240), 40).convert("RGB")))})
    assert status == 200 and len(items) == 10


def test_labels_outside_the_spec_are_dropped(nuclio, monkeypatch, caplog):
    cells = [fake_instance(np.ones((8, 8)), label="alien"), fake_instance(np.ones((8, 8)), 20, 20)]
    monkeypatch.setattr(handler_pipeline(nuclio), "run", lambda image, threshold=0.5: list(cells))
    status, items = call(nuclio, {"image": b64(_png(Image.effect_noise((64, 48), 40).convert("RGB")))})
    assert status == 200 and [i["label"] for i in items] == ["lymphocyte"]
    assert "outside the spec" in caplog.text and "alien" in caplog.text


def test_cell_touching_every_border_stays_inside_the_frame(nuclio, monkeypatch):
    w, h = 64, 48
    yy, xx = np.mgrid[0:h, 0:w]
    blob = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 <= 1.15  # touches all 4
    assert blob[0].any() and blob[-1].any() and blob[:, 0].any() and blob[:, -1].any()
    overhang = np.ones((20, 20), bool)  # a mask partly outside the frame (left/top -5)
    cells = [fake_instance(blob), fake_instance(overhang, left=-5, top=-5), fake_instance(overhang, w - 10, h - 10)]
    monkeypatch.setattr(handler_pipeline(nuclio), "run", lambda image, threshold=0.5: list(cells))
    status, items = call(nuclio, {"image": b64(_png(Image.effect_noise((w, h), 40).convert("RGB")))})
    assert status == 200 and len(items) == 3
    for item in items:
        check_item(item, w, h)  # every vertex in [0, w] x [0, h], mask box inside
    pts = np.asarray(items[0]["points"]).reshape(-1, 2)
    assert pts[:, 0].max() == w and pts[:, 1].max() == h and pts.min() == 0  # clamped, not lost
    *_, xtl, ytl, xbr, ybr = items[0]["mask"]
    assert (xtl, ytl, xbr, ybr) == (0, 0, w - 1, h - 1)


def test_polygon_overshoot_is_clamped():
    mask = Mask(np.ones((10, 12), bool), 52, 38)  # its last pixel is (63, 47) of a 64x48 frame
    raw = np.asarray(masks.polygon_points(mask)).reshape(-1, 2)
    clamped = np.asarray(masks.polygon_points(mask, 64, 48)).reshape(-1, 2)
    assert raw[:, 0].max() >= 64 or raw[:, 1].max() >= 48  # the edge tracing reaches the border
    assert clamped[:, 0].max() <= 64 and clamped[:, 1].max() <= 48


# -- device ---------------------------------------------------------------------------------


def test_cuda_without_a_gpu_warns_and_runs_on_cpu(monkeypatch):
    monkeypatch.setattr(serverless, "_cuda_available", lambda: False)
    warnings = []
    assert serverless.resolve_device("cuda", warnings.append) == "cpu"
    assert "no GPU is visible" in warnings[0] and "cuda!" in warnings[0]
    with pytest.raises(BundleError, match="no GPU is visible"):
        serverless.resolve_device("cuda!", warnings.append)
    with pytest.raises(BundleError, match="use cpu, cuda or cuda!"):
        serverless.resolve_device("gpu")
    assert serverless.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(serverless, "_cuda_available", lambda: True)
    assert serverless.resolve_device("cuda!") == "cuda"


def test_gpu_env_on_a_cpu_host_answers(weights_dir, bccd_dir, monkeypatch, caplog):
    import nuclio_sdk.test

    monkeypatch.setattr(serverless, "_cuda_available", lambda: False)
    monkeypatch.setenv(serverless.ENV_WEIGHTS, str(weights_dir))
    monkeypatch.setenv(serverless.ENV_DEVICE, "cuda")
    platform = nuclio_sdk.test.Platform()
    data = (bccd_dir / "images" / "BloodImage_00002.jpg").read_bytes()

    def handler(context, event):
        return serverless.handler(context, event)

    import sys

    module = type(sys)("cvat_tools_gpu_on_cpu")
    module.init_context, module.handler = serverless.init_context, handler
    handler.__module__ = module.__name__
    monkeypatch.setitem(sys.modules, module.__name__, module)
    response = platform.call_handler(handler, event({"image": b64(data)}))
    assert response.status_code == 200 and len(json.loads(response.body)) >= 1
    assert "running on CPU" in caplog.text


def test_foreign_classifier_labels_refused_at_start():
    from cvat_tools.pipeline import Pipeline

    pipeline = Pipeline(None, FakeModel([("alien", 0.9)], labels_=["alien", "lymphocyte"]))
    with pytest.raises(BundleError, match="not in the function's spec"):
        serverless.check_labels(pipeline)


@pytest.mark.parametrize("poly", [True, False])
def test_sdk_function_downscales_oversize_frames(weights_dir, bccd_dir, monkeypatch, poly):
    import PIL.Image
    from cvat_sdk.auto_annotation.driver import _DetectionFunctionContextImpl
    from cvat_sdk.masks import decode_mask

    from cvat_tools import cvat_function

    function = cvat_function.create(weights=str(weights_dir))
    monkeypatch.setattr(imaging, "MAX_PIXELS", 100_000)  # the 640x480 field is 3x over
    context = _DetectionFunctionContextImpl(frame_name="f.jpg", conf_threshold=0.5,
                                            conv_mask_to_poly=poly)
    with PIL.Image.open(bccd_dir / "images" / "BloodImage_00002.jpg") as image:
        shapes = function.detect(context, image)
    assert shapes
    for shape in shapes:
        if poly:
            xy = np.asarray(shape.points).reshape(-1, 2)
            assert (xy >= 0).all() and (xy[:, 0] <= 640).all() and (xy[:, 1] <= 480).all()
        else:
            assert decode_mask(shape.points, image_width=640, image_height=480).any()
