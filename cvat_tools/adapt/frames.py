"""Where the annotated pixels come from: image files found under a folder (the export
command's lookup) or frames fetched from a CVAT task; checked before any training."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..formats.annotations import Dataset


@dataclass
class Frames:
    """Image name -> file (``paths``) or encoded bytes (``data``, fetched from CVAT)."""

    paths: dict[str, Path] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # name -> what to call it in messages

    def load(self, name: str) -> np.ndarray:
        from ..imaging import decode_image, load_image

        if name in self.paths:
            return load_image(self.paths[name])
        return decode_image(self.data[name], self.where.get(name, name))


def check_sizes(dataset: Dataset, frames: Frames, names: set[str], source: str) -> None:
    """Every image in ``names`` is there and has the annotated size (EXIF applied)."""
    from ..imaging import image_size

    wrong = []
    for image in dataset.images:
        if image.name not in names or image.name not in frames.paths:
            continue
        size = image_size(frames.paths[image.name])
        if size != (image.width, image.height):
            wrong.append(f"{frames.paths[image.name]} is {size[0]}x{size[1]}, annotated as "
                         f"{image.width}x{image.height}")
    if wrong:
        raise InputError(f"{source}: image size differs from the annotation: " + "; ".join(wrong[:3])
                         + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
                         + ". These annotations belong to other versions of the images")


@contextlib.contextmanager
def open_file_input(annotations: Path, images: Path | None, label_map: dict | None,
                    fmt: str = "auto") -> Iterator[tuple[Dataset, Frames, Path]]:
    """(dataset with project labels, frames of every annotated image found, images folder).

    Anything ``cvat-tools export`` reads; a zip's own images live as long as the block."""
    from ..formats.image_files import ImageIndex
    from ..formats.io import open_annotations
    from ..formats.labelmap import apply_label_map

    if images is not None and not Path(images).is_dir():
        raise InputError(f"--images {images}: no such folder")
    with open_annotations(annotations, fmt, images) as (dataset, own_images, _):
        apply_label_map(dataset, label_map, str(annotations))
        folder = Path(images) if images else own_images
        if folder is None:
            raise InputError(f"{annotations}: has no images of its own; pass --images DIR "
                             "(the folder with the annotated images)")
        index = ImageIndex.of(folder)
        frames = Frames()
        for image in dataset.images:
            path = index.find(image.name, str(annotations))
            if path is not None:
                frames.paths[image.name] = path
        yield dataset, frames, folder


def check_present(frames: Frames, names: set[str], source: str, folder: str) -> None:
    missing = sorted(n for n in names if n not in frames.paths and n not in frames.data)
    if missing:
        shown = ", ".join(n if len(n) <= 80 else n[:77] + "..." for n in missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{source}: {len(missing)} annotated image(s) not found under {folder}: "
                         f"{shown}; pass --images pointing at the folder that holds them")
