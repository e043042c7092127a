"""The cvat-sdk auto-annotation function, checked by cvat-sdk's own spec and driver validation."""
from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import pytest
import cvat_sdk.models as models
from cvat_sdk.auto_annotation import BadFunctionError
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
from cvat_sdk.masks import decode_mask

from cvat_tools import cvat_function, labels
from cvat_tools.commands import annotate as annotate_cmd
from cvat_tools.formats.masks import mask_to_full, polygon_to_mask
from cvat_tools.imaging import load_image
from cvat_tools.pipeline import Pipeline, attribute_specs
from pipeline_fakes import (
    GRADED_COUNTS, GRADED_SCORES, GRADED_SHAPE, graded_field, graded_pipeline, iou, shared_weights,
)


@pytest.fixture(scope="module")
def function():
    return cvat_function.create(weights=str(shared_weights()))


@pytest.fixture(scope="module")
def bccd_path(bccd_dir):
    return bccd_dir / "images" / "BloodImage_00002.jpg"


@pytest.fixture(scope="module")
def labels_json(tmp_path_factory):
    """OUT/labels.json exactly as ``cvat-tools predict`` writes it (the file a user pastes into
    CVAT's label constructor, Raw tab), from a synthetic field: no data needed."""
    import cv2

    from cli_run import run_cli

    folder = tmp_path_factory.mktemp("labels_json")
    field = np.full((120, 160, 3), (225, 215, 220), np.uint8)
    cv2.circle(field, (80, 60), 16, (120, 60, 160), -1)
    PIL.Image.fromarray(field).save(folder / "field.png")
    code, _, err = run_cli("predict", folder / "field.png", "--out", folder / "out",
                           "--weights", shared_weights())
    assert code == 0, err
    return json.loads((folder / "out" / "labels.json").read_text())


def task_from_labels_json(raw, label_type=None, with_attributes=True):
    """The labels of a CVAT task created from ``raw`` (labels.json) in the label constructor,
    as the server returns them: ids assigned, every field checked by cvat-sdk's models (enum
    values) and by CVAT's attribute rules (cvat_sdk.attributes: number = "min max step" ints,
    select/radio = non-empty values holding the default, checkbox default true/false)."""
    from cvat_sdk.attributes import attribute_value_validator

    out = []
    for i, label in enumerate(raw):
        assert set(label) <= {"name", "type", "attributes", "color"}, label
        attrs = []
        for j, a in enumerate(label.get("attributes", []) if with_attributes else []):
            assert set(a) == {"name", "mutable", "input_type", "default_value", "values"}, a
            assert isinstance(a["mutable"], bool) and all(isinstance(v, str) for v in a["values"])
            attr = models.Attribute(id=1000 + 10 * i + j, name=a["name"],
                                    input_type=a["input_type"], values=list(a["values"]),
                                    mutable=a["mutable"], default_value=a["default_value"])
            assert attribute_value_validator(attr)(a["default_value"]), a  # CVAT's own rule
            attrs.append(attr)
        out.append(models.Label._from_openapi_data(
            id=500 + i, name=label["name"], type=label_type or label.get("type", "any"),
            attributes=attrs, sublabels=[], color="#ff0000", has_parent=False))
    return out


def mapper(ds_labels, conv_mask_to_poly=False):
    return _AnnotationMapper(logging.getLogger("test"), cvat_function.function_spec().labels,
                             ds_labels, allow_unmatched_labels=False,
                             conv_mask_to_poly=conv_mask_to_poly)


def context(threshold=None, poly=False):
    return _DetectionFunctionContextImpl(frame_name="f.jpg", conf_threshold=threshold,
                                         conv_mask_to_poly=poly)


def assert_shapes_are(remapped, expected, task, width, height):
    """Shapes remapped onto ``task`` (the labels.json task) carry exactly the instances'
    labels, masks and attributes, and every value passes the task's own attribute rules."""
    from cvat_sdk.attributes import attribute_value_validator

    assert len(remapped) == len(expected)
    by_id = {label.id: label for label in task}
    for shape, inst in zip(remapped, expected):
        label = by_id[shape.label_id]
        assert label.name == inst.label
        assert shape.type.value == "mask" and shape.source == "auto"
        bitmap = decode_mask(shape.points, image_width=width, image_height=height)
        assert np.array_equal(bitmap, mask_to_full(inst.geometry, width, height))
        attrs = {a.id: a for a in label.attributes}
        values = {attrs[v.spec_id].name: v.value for v in shape.attributes}
        assert values == inst.attributes
        for v in shape.attributes:
            assert attribute_value_validator(attrs[v.spec_id])(v.value), (attrs[v.spec_id], v)


def test_spec_validates_and_covers_the_label_set(function):
    spec = function.spec  # DetectionFunctionSpec validated ids/attributes at construction
    assert [label.name for label in spec.labels] == list(labels.ALL_CLASSES)
    assert all(label.type == "mask" for label in spec.labels)
    for label in spec.labels:
        assert [a.name for a in label.attributes] == [a.name for a in attribute_specs()]


def test_labels_json_declares_the_functions_attribute_types(labels_json):
    """labels.json is how a user creates the task: its attribute types and values must be
    exactly the function's, or cvat-sdk refuses the task and CVAT drops the values."""
    assert [label["name"] for label in labels_json] == list(labels.ALL_CLASSES)
    expected = {"classifier": "select", "classifier_score": "number", "refiner": "select",
                "refiner_score": "number", "needs_review": "checkbox", "review_reason": "select",
                "review_priority": "number"}
    for label in labels_json:
        assert {a["name"]: a["input_type"] for a in label["attributes"]} == expected
        by_name = {a["name"]: a for a in label["attributes"]}
        assert by_name["classifier_score"]["values"] == ["0", "100", "1"]
        assert by_name["classifier"]["values"] == list(labels.ALL_CLASSES)
        assert by_name["refiner"]["values"] == ["none", *labels.ALL_CLASSES]
        for spec in attribute_specs():
            assert by_name[spec.name]["values"] == list(spec.values)
            assert by_name[spec.name]["default_value"] == spec.default


def test_masks_pass_the_sdk_driver_and_match_the_pipeline(function, bccd_path, labels_json):
    image = PIL.Image.open(bccd_path)
    shapes = function.detect(context(0.5), image)
    assert shapes, "the BCCD field has a white blood cell"
    rgb = load_image(bccd_path)
    h, w = rgb.shape[:2]
    expected = function.pipeline.run(rgb, threshold=0.5)
    task = task_from_labels_json(labels_json)
    tags, remapped = mapper(task).validate_and_remap(shapes, ds_frame=3)
    assert not tags and all(shape.frame == 3 for shape in remapped)
    assert_shapes_are(remapped, expected, task, w, h)


def _graded_frame(mode="RGB"):
    return PIL.Image.fromarray(graded_field()).convert(mode)


@pytest.mark.parametrize("threshold", [None, *GRADED_COUNTS])
def test_detect_honours_conf_threshold(threshold, labels_json):
    """Scores 0.99 ... 0.5 (no data): each conf_threshold keeps exactly the cells >= it; None
    is the default 0.5; the shapes are Pipeline.run's at that threshold."""
    function = cvat_function.WbcDetectionFunction(graded_pipeline())
    shapes = function.detect(context(threshold), _graded_frame())
    used = 0.5 if threshold is None else threshold
    assert len(shapes) == GRADED_COUNTS[used]
    assert function.pipeline.segmenter.calls == [used]
    h, w = GRADED_SHAPE
    expected = graded_pipeline().run(graded_field(), threshold=used)
    assert [i.score for i in expected] == list(GRADED_SCORES[:len(shapes)])
    task = task_from_labels_json(labels_json)
    _, remapped = mapper(task).validate_and_remap(shapes, ds_frame=0)
    assert_shapes_are(remapped, expected, task, w, h)


def test_conv_mask_to_poly_gives_polygons(function, bccd_path, labels_json):
    image = PIL.Image.open(bccd_path)
    shapes = function.detect(context(0.5, poly=True), image)
    task = task_from_labels_json(labels_json, "polygon")
    _, remapped = mapper(task, conv_mask_to_poly=True).validate_and_remap(shapes, ds_frame=0)
    masks = function.detect(context(0.5), image)
    assert len(remapped) == len(masks) >= 1
    for poly, mask in zip(remapped, masks):
        assert poly.type.value == "polygon" and len(poly.points) >= 6
        rgb_w, rgb_h = image.size
        filled = polygon_to_mask(np.reshape(poly.points, (-1, 2)), rgb_h, rgb_w)
        assert iou(filled, decode_mask(mask.points, image_width=rgb_w, image_height=rgb_h)) > 0.8
    # and masks are refused by the driver when polygons were asked for: we must not send them
    with pytest.raises(BadFunctionError):
        mapper(task, conv_mask_to_poly=True).validate_and_remap(masks, 0)


def test_conf_threshold_is_honoured_on_a_real_field(function, bccd_path):
    image = PIL.Image.open(bccd_path)
    everything = function.detect(context(0.0), image)
    none_default = function.detect(context(None), image)  # default 0.5
    strict = function.detect(context(1.0), image)
    assert len(everything) >= len(none_default) >= len(strict)
    rgb = load_image(bccd_path)
    scores = [i.score for i in function.pipeline.run(rgb, threshold=0.0)]
    assert len(strict) == sum(s >= 1.0 for s in scores)


def test_task_without_our_attributes_is_reported(labels_json):
    with pytest.raises(BadFunctionError, match="not in dataset"):
        mapper(task_from_labels_json(labels_json, with_attributes=False))


def test_task_with_text_attributes_is_refused(labels_json):
    """What a labels.json with every type "text" would give: cvat-sdk refuses the task."""
    forced = json.loads(json.dumps(labels_json))
    for label in forced:
        for a in label["attributes"]:
            a["input_type"] = "text"
    with pytest.raises(BadFunctionError, match="input type"):
        mapper(task_from_labels_json(forced))


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_rgba_and_grey_frames_give_the_same_cells(mode, labels_json):
    """Other frame modes reach the pipeline as RGB: same cells, same shapes as RGB."""
    function = cvat_function.WbcDetectionFunction(graded_pipeline())
    rgb = function.detect(context(0.5), _graded_frame())
    other = function.detect(context(0.5), _graded_frame(mode))
    assert len(other) == len(rgb) == GRADED_COUNTS[0.5]
    assert [(s.label_id, s.points, s.attributes) for s in other] == \
        [(s.label_id, s.points, s.attributes) for s in rgb]
    mapper(task_from_labels_json(labels_json)).validate_and_remap(other, 0)


def test_rgba_and_grey_bccd_frames_are_accepted(function, bccd_path, labels_json):
    rgb = PIL.Image.open(bccd_path).convert("RGB")
    colour = function.detect(context(0.5), rgb)
    rgba = function.detect(context(0.5), rgb.convert("RGBA"))
    assert colour and [s.points for s in rgba] == [s.points for s in colour]  # same cells
    task = task_from_labels_json(labels_json)
    mapper(task).validate_and_remap(rgba, 0)
    # A grey frame is converted and answered validly; the classical segmenter of this fixture
    # finds no cell without the stain's colour (0 of 6 BCCD test fields; the shipped Mask
    # R-CNN finds 3 of 6: test_segment_classical.py::test_shipped_segmenter_on_a_grey_field).
    mapper(task).validate_and_remap(function.detect(context(0.5), rgb.convert("L")), 0)


# -- cvat-tools annotate: the paths that need no server ------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _annotate(monkeypatch, env, *args):
    import contextlib
    import io

    from cvat_tools.cli import main

    for name in ("CVAT_USER", "CVAT_PASSWORD", "CVAT_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["annotate", *args])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue() + err.getvalue()


def test_annotate_without_credentials_says_which(monkeypatch):
    code, text = _annotate(monkeypatch, {"CVAT_USER": "alice"},
                           "--host", "http://127.0.0.1:1", "--task", "3")
    assert code == 2
    assert "CVAT_ACCESS_TOKEN" in text and "CVAT_PASSWORD missing" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("env", [
    {"CVAT_USER": "alice", "CVAT_PASSWORD": "s3cret-pw"},
    {"CVAT_ACCESS_TOKEN": "tok-s3cret"},
])
def test_annotate_unreachable_host_is_clear_and_hides_secrets(monkeypatch, env):
    host = f"http://127.0.0.1:{_closed_port()}"
    code, text = _annotate(monkeypatch, env, "--host", host, "--task", "3")
    assert code == 2
    assert f"cannot reach CVAT at {host}" in text and "Traceback" not in text
    assert "s3cret" not in text


class _FakeSample:
    def __init__(self, index, frame):
        load = (lambda: PIL.Image.open(frame)) if not isinstance(frame, PIL.Image.Image) \
            else (lambda: frame.copy())
        self.frame_index = index
        self.frame_name = getattr(frame, "name", f"frame_{index}.png")
        self.media = type("Media", (), {"load_image": staticmethod(load)})


class _FakeTaskDataset:
    """What cvat_sdk's driver reads from a task: its labels (made from labels.json, as a user
    creates the task) and its frames."""

    frames: list = []
    raw_labels: list = []

    def __init__(self, client, task_id, load_annotations=False):
        assert task_id == 7 and load_annotations is False
        self.labels = task_from_labels_json(self.raw_labels)
        self.samples = [_FakeSample(i, p) for i, p in enumerate(self.frames)]


class _FakeClient:
    def __init__(self):
        self.logger = logging.getLogger("fake-cvat")
        self.sent = {}
        client = self

        class _Api:
            def update_annotations(self, task_id, labeled_data_request):
                client.sent = {"mode": "replace", "task": task_id, "data": labeled_data_request}

            def partial_update_annotations(self, action, task_id, patched_labeled_data_request):
                client.sent = {"mode": action, "task": task_id, "data": patched_labeled_data_request}

        task = type("Task", (), {"get_labels": staticmethod(
            lambda: task_from_labels_json(_FakeTaskDataset.raw_labels))})()
        self.tasks = type("Tasks", (), {"api": _Api(),
                                        "retrieve": staticmethod(lambda task_id: task)})()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _run_annotate(monkeypatch, frames, raw_labels, *args):
    """cvat-tools annotate against a fake server holding ``frames``; (exit code, output,
    what the server received, the task's labels, the login used)."""
    import socket

    import cvat_sdk
    import cvat_sdk.auto_annotation.driver as driver

    monkeypatch.setattr(_FakeTaskDataset, "frames", frames)
    monkeypatch.setattr(_FakeTaskDataset, "raw_labels", raw_labels)
    monkeypatch.setattr(driver, "TaskDataset", _FakeTaskDataset)
    client = _FakeClient()
    seen = {}

    def fake_make_client(host, **login):
        seen.update(host=host, login=login)
        return client

    monkeypatch.setattr(cvat_sdk, "make_client", fake_make_client)
    # the fake client stands for the whole HTTP side, /api/server/about included
    monkeypatch.setattr(annotate_cmd, "check_is_cvat", lambda host, timeout: None)
    with socket.socket() as server:  # something listening, for the reachability probe
        server.bind(("127.0.0.1", 0))
        server.listen()
        host = f"http://127.0.0.1:{server.getsockname()[1]}"
        code, text = _annotate(monkeypatch, {"CVAT_ACCESS_TOKEN": "tok"}, "--host", host,
                               "--task", "7", *args)
    assert seen == {"host": host, "login": {"access_token": "tok"}}, text
    return code, text, client.sent, task_from_labels_json(raw_labels)


def _check_upload(sent, task, expected_per_frame, width_height):
    assert sent["task"] == 7
    shapes = sent["data"].shapes
    assert len(shapes) == sum(len(e) for e in expected_per_frame)
    for frame, expected in enumerate(expected_per_frame):
        mine = [s for s in shapes if s.frame == frame]
        assert_shapes_are(mine, expected, task, *width_height[frame])


@pytest.mark.parametrize("threshold", [0.55, 0.75, 0.95])
def test_annotate_uploads_pipeline_output_at_its_threshold(monkeypatch, labels_json, threshold):
    """No data: cvat-tools annotate --threshold T with the graded pipeline uploads exactly
    Pipeline.run(frame, T) for every frame onto the labels.json task."""
    monkeypatch.setattr(cvat_function, "create",
                        lambda **kw: cvat_function.WbcDetectionFunction(graded_pipeline()))
    frames = [_graded_frame(), _graded_frame("L")]
    code, text, sent, task = _run_annotate(monkeypatch, frames, labels_json,
                                           "--threshold", str(threshold))
    assert code == 0, text
    assert sent["mode"] == "create"  # without --clear-existing the task's shapes are kept
    h, w = GRADED_SHAPE
    expected = [graded_pipeline().run(graded_field(), threshold=threshold)] * 2
    assert len(expected[0]) == GRADED_COUNTS[threshold]
    _check_upload(sent, task, expected, [(w, h)] * 2)


def test_annotate_end_to_end_through_the_sdk_driver(monkeypatch, bccd_dir, labels_json):
    """cvat-tools annotate with cvat-sdk's real driver on real fields; only the server side
    is faked; the upload is Pipeline.run's output, shape for shape."""
    weights = shared_weights()
    frames = [bccd_dir / "images" / "BloodImage_00002.jpg", bccd_dir / "images" / "BloodImage_00005.jpg"]
    code, text, sent, task = _run_annotate(monkeypatch, frames, labels_json, "--clear-existing",
                                           "--threshold", "0.4", "--weights", str(weights))
    assert code == 0, text
    assert sent["mode"] == "replace"
    pipeline = Pipeline.load(weights=weights)
    images = [load_image(p) for p in frames]
    expected = [pipeline.run(image, threshold=0.4) for image in images]
    assert sum(len(e) for e in expected) >= 2
    _check_upload(sent, task, expected, [(im.shape[1], im.shape[0]) for im in images])
