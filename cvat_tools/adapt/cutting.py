"""One masked crop per cell, cut as the pipeline cuts them (crops.cell_crop).

Polygons and masks give their own outline (formats.clean.outline_instance, as export does).
A box has none: the segmenter runs once on the image and the detection covering most of the
box, clipped to it, is the cell (what an annotator means by a box around a WBC).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..crops import cell_crop
from ..formats.annotations import Box, Dataset, Mask
from .corrections import Cell
from .frames import Frames

MIN_BOX_COVER = 0.25  # of the box's area, what the chosen detection must cover


@dataclass
class CutCell:
    cell: Cell
    crop: np.ndarray  # natural size (what training reads, as export --crops writes)
    sized: dict[int, np.ndarray] = field(default_factory=dict)  # input size -> crop at that size


def box_mask(box: Box, detections: list[Any], width: int, height: int) -> Mask | None:
    """The detection covering most of the box, clipped to it; None when none covers enough."""
    x0, y0 = max(int(np.floor(box.xtl)), 0), max(int(np.floor(box.ytl)), 0)
    x1, y1 = min(int(np.ceil(box.xbr)), width), min(int(np.ceil(box.ybr)), height)
    if x1 <= x0 or y1 <= y0:
        return None
    best, best_area = None, 0
    for det in detections:
        m = det.mask
        full = np.zeros((height, width), dtype=bool)
        full[m.top:m.top + m.height, m.left:m.left + m.width] = m.bitmap
        inside = full[y0:y1, x0:x1]
        area = int(inside.sum())
        if area > best_area:
            best, best_area = inside, area
    if best is None or best_area < MIN_BOX_COVER * (x1 - x0) * (y1 - y0):
        return None
    return Mask(best.copy(), left=x0, top=y0)


def cut_cells(cells: Iterable[Cell], dataset: Dataset, frames: Frames, sizes: Iterable[int],
              segmenter: Any | None, progress: bool = True) -> tuple[list[CutCell], list[dict]]:
    """(cut cells, left-out entries) for ``cells``, each image read once."""
    from tqdm import tqdm

    from ..formats.clean import outline_instance

    by_image: dict[str, list[Cell]] = {}
    for cell in cells:
        by_image.setdefault(cell.image, []).append(cell)
    shapes = {im.name: (im.width, im.height) for im in dataset.images}
    out, left_out = [], []
    for name in tqdm(sorted(by_image), desc="cutting cells", unit="image", disable=not progress or None):
        pixels = frames.load(name)
        width, height = shapes[name]
        detections = None
        for cell in by_image[name]:
            if isinstance(cell.instance.geometry, Box):
                if detections is None:
                    detections = segmenter.segment(pixels, threshold=0.3) if segmenter is not None else []
                mask, reason = box_mask(cell.instance.geometry, detections, width, height), \
                    "box: the segmenter found no cell inside it"
            else:
                outline, reason = outline_instance(cell.instance, width, height)
                mask = outline.mask if outline is not None else None
            if mask is None:
                left_out.append({"image": name, "label": cell.label, "reason": reason})
                continue
            crop = cell_crop(pixels, mask.bitmap, mask.left, mask.top)
            sized = {s: cell_crop(pixels, mask.bitmap, mask.left, mask.top, size=s) for s in set(sizes)}
            out.append(CutCell(cell, crop, sized))
    return out, left_out
