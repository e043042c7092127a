"""Read corrected tasks from a CVAT server through cvat-sdk: labels, frame metadata,
shapes (with their ``source``) and the frames that hold counted shapes.

Login, timeouts and error messages are ``cvat-tools annotate``'s (credentials from the
environment only, the host redacted in every message, each call bounded by --timeout).
Image names are ``task<ID>/<frame name>`` so several tasks never collide.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from ..errors import CvatToolsError
from ..formats.annotations import Box, Dataset, ImageAnnotation, Instance, Mask, Points, Polygon
from .frames import Frames


def _geometry(shape, width: int, height: int):
    """Our geometry for a CVAT shape, or (None, reason)."""
    from ..formats.masks import decode_cvat_mask, mask_from_bitmap

    kind = str(getattr(shape.type, "value", shape.type))
    points = [float(v) for v in shape.points]
    if kind == "polygon":
        return Polygon(list(zip(points[0::2], points[1::2]))), None
    if kind == "rectangle":
        if float(getattr(shape, "rotation", 0) or 0) != 0:
            return None, "rotated box"
        return Box(*points[:4]), None
    if kind == "mask":
        try:
            mask = mask_from_bitmap(decode_cvat_mask(points, width, height))
        except ValueError as exc:
            return None, f"mask not decodable ({exc})"
        return (mask, None) if isinstance(mask, Mask) else (None, "empty mask")
    if kind == "points":
        return Points(list(zip(points[0::2], points[1::2]))), None
    return None, f"{kind} shapes are not read"


def read_task(client, task_id: int) -> tuple[Dataset, dict[str, int]]:
    """(dataset of the task's frames with shapes, image name -> frame number)."""
    task = client.tasks.retrieve(task_id)
    names = {label.id: label.name for label in task.get_labels()}
    frames = task.get_meta().frames
    annotations = task.get_annotations()
    dataset, by_frame, frame_of = Dataset(), {}, {}
    for track in annotations.tracks:
        dataset.skipped.append({"image": f"task{task_id}", "label": names.get(track.label_id, "?"),
                                "reason": "track (interpolated shapes) not read; adapt reads shapes"})
    for shape in annotations.shapes:
        if not 0 <= shape.frame < len(frames):
            raise CvatToolsError(f"task {task_id}: a shape on frame {shape.frame}, which the task does "
                                 f"not have ({len(frames)} frames; a video task?)")
        meta = frames[shape.frame]
        name = f"task{task_id}/{meta.name}"
        if shape.frame not in by_frame:
            by_frame[shape.frame] = ImageAnnotation(name, int(meta.width), int(meta.height), id=shape.frame)
            frame_of[name] = shape.frame
        label = names.get(shape.label_id, f"label id {shape.label_id}")
        geometry, reason = _geometry(shape, int(meta.width), int(meta.height))
        if geometry is None:
            dataset.skipped.append({"image": name, "label": label, "reason": reason})
            continue
        by_frame[shape.frame].instances.append(Instance(
            label, geometry, occluded=bool(shape.occluded), z_order=int(shape.z_order or 0),
            source=str(shape.source or "manual")))
    dataset.images = [by_frame[k] for k in sorted(by_frame)]
    return dataset, frame_of


@contextlib.contextmanager
def open_task_input(host: str, task_ids: list[int], timeout: float, label_map: dict | None
                    ) -> Iterator[tuple[Dataset, Frames, str]]:
    """The tasks as one dataset with their frames fetched; every server problem one line."""
    from ..commands.annotate import connect, credentials_from_env, explain, network_timeouts, redact
    from ..formats.labelmap import apply_label_map
    from .corrections import CORRECTED_SOURCES

    login = credentials_from_env()
    host = redact(host)
    merged, frames, doing = Dataset(), Frames(), "logging in"
    with network_timeouts(timeout):
        try:
            client = connect(host, login, timeout)
            with client:
                for task_id in task_ids:
                    doing = f"reading task {task_id}"
                    dataset, frame_of = read_task(client, task_id)
                    apply_label_map(dataset, label_map, f"task {task_id} at {host}")
                    merged.images += dataset.images
                    merged.skipped += dataset.skipped
                    task = client.tasks.retrieve(task_id)
                    for image in dataset.images:
                        if any((i.source or "manual") in CORRECTED_SOURCES for i in image.instances):
                            doing = f"fetching frame {frame_of[image.name]} of task {task_id}"
                            frames.data[image.name] = task.get_frame(frame_of[image.name],
                                                                     quality="original").read()
                            frames.where[image.name] = f"task {task_id} frame {frame_of[image.name]}"
        except CvatToolsError:
            raise
        except Exception as exc:  # network and server answers: one line, host redacted
            error = _not_found(exc, host, doing) or explain(exc, host, timeout, doing)
            if error is None:
                raise
            raise error from None
    yield merged, frames, host


def _not_found(exc: BaseException, host: str, doing: str) -> CvatToolsError | None:
    from cvat_sdk.exceptions import ApiException

    if isinstance(exc, ApiException) and exc.status == 404 and doing.startswith("reading task"):
        task = doing.split()[-1]
        return CvatToolsError(f"CVAT at {host} has no task {task} (HTTP 404), or this login may not "
                              "see it; check --task")
    return None
