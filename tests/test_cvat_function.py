"""The cvat-sdk auto-annotation function, checked by cvat-sdk's own spec and driver validation."""
from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest
import cvat_sdk.models as models
from cvat_sdk.auto_annotation import BadFunctionError
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
from cvat_sdk.masks import decode_mask

from cvat_tools import cvat_function, labels
from cvat_tools.formats.masks import mask_to_full, polygon_to_mask
from cvat_tools.imaging import load_image
from cvat_tools.pipeline import Pipeline, attribute_specs
from pipeline_fakes import iou, shared_weights


@pytest.fixture(scope="module")
def function():
    return cvat_function.create(weights=str(shared_weights()))


@pytest.fixture(scope="module")
def bccd_path(bccd_dir):
    return bccd_dir / "images" / "BloodImage_00002.jpg"


def task_labels(label_type="any", with_attributes=True):
    """Labels as a CVAT task created from our label set would have them (server ids)."""
    out = []
    for i, name in enumerate(labels.ALL_CLASSES):
        attrs = []
        if with_attributes:
            for j, spec in enumerate(attribute_specs()):
                attrs.append(models.Attribute(
                    id=1000 + 10 * i + j, name=spec.name, input_type=spec.input_type,
                    values=list(spec.values), mutable=False, default_value=spec.default))
        out.append(models.Label._from_openapi_data(
            id=500 + i, name=name, type=label_type, attributes=attrs, sublabels=[],
            color="#ff0000", has_parent=False))
    return out


def mapper(ds_labels, conv_mask_to_poly=False):
    return _AnnotationMapper(logging.getLogger("test"), cvat_function.function_spec().labels,
                             ds_labels, allow_unmatched_labels=False,
                             conv_mask_to_poly=conv_mask_to_poly)


def context(threshold=None, poly=False):
    return _DetectionFunctionContextImpl(frame_name="f.jpg", conf_threshold=threshold,
                                         conv_mask_to_poly=poly)


def test_spec_validates_and_covers_the_label_set(function):
    spec = function.spec  # DetectionFunctionSpec validated ids/attributes at construction
    assert [label.name for label in spec.labels] == list(labels.ALL_CLASSES)
    assert all(label.type == "mask" for label in spec.labels)
    for label in spec.labels:
        assert [a.name for a in label.attributes] == [a.name for a in attribute_specs()]


def test_masks_pass_the_sdk_driver_and_match_the_pipeline(function, bccd_path):
    image = PIL.Image.open(bccd_path)
    shapes = function.detect(context(0.5), image)
    assert shapes, "the BCCD field has a white blood cell"
    rgb = load_image(bccd_path)
    h, w = rgb.shape[:2]
    expected = function.pipeline.run(rgb, threshold=0.5)
    assert len(expected) == len(shapes)
    tags, remapped = mapper(task_labels()).validate_and_remap(shapes, ds_frame=3)
    assert not tags and len(remapped) == len(shapes)
    for shape, inst in zip(remapped, expected):
        assert shape.type.value == "mask" and shape.frame == 3 and shape.source == "auto"
        assert shape.label_id == 500 + labels.ALL_CLASSES.index(inst.label)
        bitmap = decode_mask(shape.points, image_width=w, image_height=h)
        assert np.array_equal(bitmap, mask_to_full(inst.geometry, w, h))
        values = {a.spec_id % 10: a.value for a in shape.attributes}
        assert values == {j: inst.attributes[s.name] for j, s in enumerate(attribute_specs())}


def test_conv_mask_to_poly_gives_polygons(function, bccd_path):
    image = PIL.Image.open(bccd_path)
    shapes = function.detect(context(0.5, poly=True), image)
    _, remapped = mapper(task_labels("polygon"), conv_mask_to_poly=True).validate_and_remap(
        shapes, ds_frame=0)
    masks = function.detect(context(0.5), image)
    for poly, mask in zip(remapped, masks):
        assert poly.type.value == "polygon" and len(poly.points) >= 6
        rgb_w, rgb_h = image.size
        filled = polygon_to_mask(np.reshape(poly.points, (-1, 2)), rgb_h, rgb_w)
        assert iou(filled, decode_mask(mask.points, image_width=rgb_w, image_height=rgb_h)) > 0.8
    # and masks are refused by the driver when polygons were asked for: we must not send them
    with pytest.raises(BadFunctionError):
        mapper(task_labels("polygon"), conv_mask_to_poly=True).validate_and_remap(masks, 0)


def test_conf_threshold_is_honoured(function, bccd_path):
    image = PIL.Image.open(bccd_path)
    everything = function.detect(context(0.0), image)
    none_default = function.detect(context(None), image)  # default 0.5
    strict = function.detect(context(1.0), image)
    assert len(everything) >= len(none_default) >= len(strict)
    rgb = load_image(bccd_path)
    scores = [i.score for i in function.pipeline.run(rgb, threshold=0.0)]
    assert len(strict) == sum(s >= 1.0 for s in scores)


def test_task_without_our_attributes_is_reported(function):
    with pytest.raises(BadFunctionError, match="not in dataset"):
        mapper(task_labels(with_attributes=False))


def test_rgba_and_grey_frames_are_accepted(function, bccd_path):
    rgb = PIL.Image.open(bccd_path).convert("RGB")
    for mode in ("RGBA", "L"):
        shapes = function.detect(context(0.5), rgb.convert(mode))
        mapper(task_labels()).validate_and_remap(shapes, 0)  # raises if anything is invalid


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
    def __init__(self, index, path):
        self.frame_index, self.frame_name = index, path.name
        self.media = type("Media", (), {"load_image": staticmethod(lambda: PIL.Image.open(path))})


class _FakeTaskDataset:
    """What cvat_sdk's driver reads from a task: its labels and its frames."""

    frames: list = []

    def __init__(self, client, task_id, load_annotations=False):
        assert task_id == 7 and load_annotations is False
        self.labels = task_labels()
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

        task = type("Task", (), {"get_labels": staticmethod(lambda: task_labels())})()
        self.tasks = type("Tasks", (), {"api": _Api(),
                                        "retrieve": staticmethod(lambda task_id: task)})()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_annotate_end_to_end_through_the_sdk_driver(monkeypatch, tmp_path, bccd_dir):
    """cvat-tools annotate with cvat-sdk's real driver; only the server side is faked."""
    import socket

    import cvat_sdk
    import cvat_sdk.auto_annotation.driver as driver

    weights = shared_weights()
    frames = [bccd_dir / "images" / "BloodImage_00002.jpg", bccd_dir / "images" / "BloodImage_00005.jpg"]
    monkeypatch.setattr(_FakeTaskDataset, "frames", frames)
    monkeypatch.setattr(driver, "TaskDataset", _FakeTaskDataset)
    client = _FakeClient()
    seen = {}

    def fake_make_client(host, **login):
        seen.update(host=host, login=login)
        return client

    monkeypatch.setattr(cvat_sdk, "make_client", fake_make_client)
    with socket.socket() as server:  # something listening, for the reachability probe
        server.bind(("127.0.0.1", 0))
        server.listen()
        host = f"http://127.0.0.1:{server.getsockname()[1]}"
        code, text = _annotate(monkeypatch, {"CVAT_ACCESS_TOKEN": "tok"}, "--host", host,
                               "--task", "7", "--clear-existing", "--threshold", "0.4",
                               "--weights", str(weights))
    assert code == 0, text
    assert seen == {"host": host, "login": {"access_token": "tok"}}
    assert client.sent["mode"] == "replace" and client.sent["task"] == 7
    shapes = client.sent["data"].shapes
    pipeline = Pipeline.load(weights=weights)
    expected = [pipeline.run(load_image(p), threshold=0.4) for p in frames]
    assert len(shapes) == sum(len(e) for e in expected) >= 2
    assert sorted({s.frame for s in shapes}) == [0, 1]
    for shape in shapes:
        assert shape.type.value == "mask" and shape.source == "auto"
        assert 500 <= shape.label_id < 500 + len(labels.ALL_CLASSES)
        assert len(shape.attributes) == len(attribute_specs())
