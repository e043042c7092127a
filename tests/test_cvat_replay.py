"""Replay of what CVAT does with our detector's answers (issue 23).

Mirrors CVAT's lambda manager, ``cvat/apps/lambda_manager/views.py`` of cvat-ai/cvat in the
2.42 line (the version with ``DetectionResultConverter``): ``LambdaFunction.invoke`` maps
labels by name (mask and polygon labels are compatible), keeps an attribute only when the
task declares it and ``check_attr_value`` accepts it (number: ``int()`` within min/max and on
the step; checkbox: "true"/"false"; select/radio: ``value in`` the DB's newline-joined
values), and ``DetectionResultConverter`` turns a mask into run lengths of the flat crop plus
the inclusive box, or takes ``points`` as a polygon with conv_mask_to_poly. ``LambdaJob``
stops the whole task on the first non-2xx answer. Older CVAT (before 2.42) checked numbers
with ``value.isnumeric()``: our values must pass both.

The replayed task: a normal field, a frame over the pixel limit, a black frame and a field
cropped so a cell touches the image border. It must complete, with every shape valid and
every vertex inside its frame.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cvat_tools import function_spec, imaging
from cvat_tools.formats.masks import serverless_mask_decode
from cvat_tools.pipeline import attribute_specs
from nuclio_calls import b64, call, fake_instance, handler_pipeline

CVAT_VERSION = "2.42"  # cvat/apps/lambda_manager/views.py: invoke, DetectionResultConverter


class TaskAborted(Exception):
    """What LambdaJob does on a non-2xx answer: the automatic annotation of the task stops."""


# -- CVAT's rules, as its code applies them --------------------------------------------------


def db_labels(label_type="mask"):
    """The task's labels as CVAT's DB holds them: attribute values newline-joined."""
    attrs = [{"name": a.name, "input_type": a.input_type, "values": "\n".join(a.values)}
             for a in attribute_specs()]
    return {item["name"]: {"type": label_type, "attributes": attrs}
            for item in function_spec.function_spec()}


def labels_compatible(model_type, db_type):
    return (model_type == db_type or (db_type == "any" and model_type != "skeleton")
            or (model_type == "any" and db_type != "skeleton")
            or (model_type in ("mask", "polygon") and db_type in ("mask", "polygon")))


def check_attr_value(value, db_attr, isnumeric_rule=False):
    kind = db_attr["input_type"]
    if kind == "number":
        if isnumeric_rule:  # before 2.42
            return value.isnumeric()
        lo, hi, step = map(int, db_attr["values"].split("\n"))
        try:
            number = int(value)
        except ValueError:
            return False
        return lo <= number <= hi and (number - lo) % step == 0
    if kind == "checkbox":
        return value in ["true", "false"]
    if kind == "text":
        return True
    if kind in ("select", "radio"):
        return value in db_attr["values"]
    return False


def mask_to_rle_counts(flat):
    """datumaro.util.mask_tools.mask_to_rle(np.array(flat)[:, None])["counts"]: run lengths
    of the flat crop, the first run counting zeros (maybe 0)."""
    flat = np.asarray(flat, dtype=np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return counts


def invoke(response, task_labels, spec, isnumeric_rule=False):
    """LambdaFunction.invoke's filtering of a detector response."""
    model = {item["name"]: item for item in spec}
    mapping = {name: label for name, label in task_labels.items()
               if name in model and labels_compatible(model[name]["type"], label["type"])}
    out = []
    for item in response:
        if item["label"] not in mapping:
            continue
        declared = {a["name"] for a in model[item["label"]]["attributes"]}
        db_attrs = {a["name"]: a for a in mapping[item["label"]]["attributes"]}
        item = dict(item)
        item["attributes"] = [
            {"name": a["name"], "value": a["value"]} for a in item.get("attributes", [])
            if a["name"] in declared and a["name"] in db_attrs
            and check_attr_value(a["value"], db_attrs[a["name"]], isnumeric_rule)
        ]
        out.append(item)
    return out


def convert(items, conv_mask_to_poly, frame):
    """DetectionResultConverter._parse_anno for mask detectors."""
    shapes = []
    for anno in items:
        shape = {"frame": frame, "label": anno["label"], "type": anno["type"],
                 "points": anno.get("mask", []) if anno["type"] == "mask" else anno.get("points", []),
                 "attributes": anno["attributes"], "source": "auto"}
        if anno["type"] == "mask" and "points" in anno and conv_mask_to_poly:
            shape["type"], shape["points"] = "polygon", anno["points"]
        elif anno["type"] == "mask":
            xtl, ytl, xbr, ybr = shape["points"][-4:]
            shape["points"] = mask_to_rle_counts(shape["points"][:-4]) + [xtl, ytl, xbr, ybr]
        shapes.append(shape)
    return shapes


def validate_shape(shape, width, height):
    """What a saved shape must satisfy to load back in CVAT (and our no-vertex-outside rule)."""
    points = shape["points"]
    assert all(np.isfinite(float(v)) for v in points)
    if shape["type"] == "polygon":
        assert len(points) % 2 == 0 and len(points) >= 6
        xy = np.asarray(points, dtype=float).reshape(-1, 2)
        assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= width).all()
        assert (xy[:, 1] >= 0).all() and (xy[:, 1] <= height).all()
    else:
        *rle, xtl, ytl, xbr, ybr = points
        assert 0 <= xtl <= xbr < width and 0 <= ytl <= ybr < height  # inclusive box, in frame
        assert sum(rle) == (xbr - xtl + 1) * (ybr - ytl + 1)
        assert all(int(v) == v and v >= 0 for v in rle)


def decode_rle(points):
    *rle, xtl, ytl, xbr, ybr = points
    flat, value = [], 0
    for run in rle:
        flat.extend([value] * int(run))
        value = 1 - value
    return np.asarray(flat, bool).reshape(ybr - ytl + 1, xbr - xtl + 1)


# -- the replayed task --------------------------------------------------------------------------


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def task_frames(bccd_dir):
    field = Image.open(bccd_dir / "images" / "BloodImage_00002.jpg").convert("RGB")
    gt = np.asarray(Image.open(bccd_dir / "masks" / "BloodImage_00002.png")) > 0
    ys, xs = np.nonzero(gt)
    # cut through the cell, a fifth of it off: what is left touches the top-left corner
    x0 = int(xs.min() + 0.2 * (xs.max() - xs.min()))
    y0 = int(ys.min() + 0.2 * (ys.max() - ys.min()))
    border = field.crop((x0, y0, field.width, field.height))
    oversize = field.resize((field.width * 2, field.height * 2), Image.BICUBIC)
    return [
        ("field", _jpeg(field), field.size),
        ("oversize", _jpeg(oversize), oversize.size),
        ("black", _png(Image.new("RGB", field.size)), field.size),
        ("border", _png(border), border.size),
    ]


def _annotate_task(nuclio, frames, conv_mask_to_poly, label_type="mask", isnumeric_rule=False):
    """LambdaJob._call_detector over the task: every frame, stop on the first non-2xx."""
    spec = function_spec.function_spec()
    saved = {}
    for index, (name, data, (width, height)) in enumerate(frames):
        status, response = call(nuclio, {"image": b64(data), "threshold": 0.5})
        if not 200 <= status < 300:
            raise TaskAborted(f"frame {index} ({name}): HTTP {status} {response}")
        items = invoke(response, db_labels(label_type), spec, isnumeric_rule)
        assert len(items) == len(response)  # every label mapped
        for before, after in zip(response, items):  # no attribute dropped by CVAT's checks
            assert len(after["attributes"]) == len(before["attributes"]) == len(attribute_specs())
        shapes = convert(items, conv_mask_to_poly, index)
        for shape, item in zip(shapes, items):
            validate_shape(shape, width, height)
            if shape["type"] == "mask":  # identical after CVAT's run-length encoding
                ours = serverless_mask_decode(item["mask"]).bitmap
                assert np.array_equal(decode_rle(shape["points"]), ours)
        saved[name] = shapes
    return saved


@pytest.mark.parametrize("conv_mask_to_poly, label_type", [(False, "mask"), (True, "polygon"),
                                                          (False, "any")])
def test_task_with_hostile_frames_completes(nuclio, task_frames, monkeypatch, conv_mask_to_poly,
                                            label_type):
    monkeypatch.setattr(imaging, "MAX_PIXELS", 640 * 480 * 2)  # the 1280x960 frame is over
    saved = _annotate_task(nuclio, task_frames, conv_mask_to_poly, label_type)
    assert len(saved["field"]) >= 1 and len(saved["oversize"]) >= 1
    assert saved["black"] == []
    # the cut cell reaches the corner (the watershed keeps a 1 px margin; validate_shape
    # checked every vertex is inside the frame)
    corner = [s for s in saved["border"]
              if (min(s["points"][0::2]) <= 1 and min(s["points"][1::2]) <= 1
                  if s["type"] == "polygon" else s["points"][-4] <= 1 and s["points"][-3] <= 1)]
    assert corner
    if conv_mask_to_poly:
        assert all(s["type"] == "polygon" for shapes in saved.values() for s in shapes)


def test_numbers_pass_the_pre_242_isnumeric_rule_too(nuclio, task_frames):
    _annotate_task(nuclio, task_frames[:1], False, isnumeric_rule=True)


def test_one_refused_frame_would_stop_the_task(nuclio, task_frames):
    """The replay is able to fail: an undecodable frame is a 400, and CVAT stops there."""
    frames = [task_frames[0], ("broken", b"\xff\xd8\xff\xe0" + b"\x00" * 64, (640, 480))]
    with pytest.raises(TaskAborted, match="frame 1"):
        _annotate_task(nuclio, frames, False)


def test_replayed_rules_refuse_what_cvat_refuses():
    numbers = {"input_type": "number", "values": "0\n100\n1"}
    assert check_attr_value("87", numbers) and not check_attr_value("0.87", numbers)
    assert not check_attr_value("101", numbers) and not check_attr_value("-1", numbers)
    assert check_attr_value("true", {"input_type": "checkbox", "values": "false"})
    assert not check_attr_value("True", {"input_type": "checkbox", "values": "false"})
    assert not check_attr_value("virus", {"input_type": "select", "values": "a\nb"})
    assert labels_compatible("mask", "polygon") and not labels_compatible("mask", "rectangle")
    assert mask_to_rle_counts([1, 1, 0, 1]) == [0, 2, 1, 1]
    with pytest.raises(AssertionError):
        validate_shape({"type": "polygon", "points": [0, 0, 10.12, 0, 10.12, 5]}, 10, 10)


def test_cell_touching_every_border_replays(nuclio, monkeypatch):
    """A cell mask touching all four borders (and the ~0.12 px overshoot of outlines traced on
    pixel edges) survives CVAT's conversion with every vertex inside the frame."""
    w, h = 64, 48
    yy, xx = np.mgrid[0:h, 0:w]
    blob = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 <= 1.15
    platform_pipeline = handler_pipeline(nuclio)
    monkeypatch.setattr(platform_pipeline, "run", lambda image, threshold=0.5: [fake_instance(blob)])
    frame = _png(Image.effect_noise((w, h), 40).convert("RGB"))
    for conv in (False, True):
        saved = _annotate_task(nuclio, [("edge", frame, (w, h))], conv)
        (shape,) = saved["edge"]
        if conv:
            xy = np.asarray(shape["points"]).reshape(-1, 2)
            assert xy[:, 0].min() == 0 and xy[:, 0].max() == w
            assert xy[:, 1].min() == 0 and xy[:, 1].max() == h
        else:
            assert shape["points"][-4:] == [0, 0, w - 1, h - 1]
