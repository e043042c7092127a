"""Turn any annotated shape into one clean cell outline (polygon + mask), or say why not.

Training wants, per cell, a valid polygon inside the image and its pixel mask. Real
annotations have 2-point polygons, bowties, vertices off the image, empty masks, boxes: each
is repaired (and noted) or skipped with a reason a person can act on; nothing raises.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import masks
from .annotations import Box, Instance, Mask, Points, Polygon


@dataclass
class Outline:
    instance: Instance
    polygon: list[tuple[float, float]]  # valid, inside the image (the largest part)
    mask: Mask  # tight crop, pixel-centre rasterization of ``polygon`` (or the source mask)
    note: str | None = None  # what was repaired, if anything
    # every outer outline, largest first: a bitmap mask may hold several parts (COCO writes all)
    polygons: list[list[tuple[float, float]]] | None = None

    def __post_init__(self):
        if self.polygons is None:
            self.polygons = [self.polygon]


def _polygon_problem(points, width: int, height: int) -> str:
    if len(points) < 3:
        return f"polygon with {len(points)} point(s); a cell outline needs at least 3"
    try:
        if not all(math.isfinite(float(v)) for p in points for v in p):
            return "polygon has non-finite coordinates"
    except (TypeError, ValueError):
        return "polygon has non-numeric coordinates"
    if masks.polygon_area(points) == 0:
        return "polygon has no area (all points on a line)"
    return f"polygon lies outside the {width}x{height} image"


def outline_instance(inst: Instance, width: int, height: int) -> tuple[Outline | None, str | None]:
    """(Outline, None) for a usable shape, (None, reason) for one that is skipped."""
    geom = inst.geometry
    if isinstance(geom, Polygon):
        if len(geom.points) > masks.MAX_POLYGON_VERTICES:
            return None, (f"polygon with {len(geom.points)} vertices, over the "
                          f"{masks.MAX_POLYGON_VERTICES} limit; simplify it in CVAT")
        pieces = masks.repair_polygon(geom.points, width, height)
        if not pieces:
            return None, _polygon_problem(geom.points, width, height)
        polygon = pieces[0]
        note = None
        if len(pieces) > 1:
            note = f"self-intersecting polygon split into {len(pieces)} pieces; kept the largest"
        elif polygon != [(float(x), float(y)) for x, y in geom.points]:
            note = "polygon repaired (self-intersection or parts outside the image removed)"
        crop = masks.polygon_to_crop(polygon, height, width)
        mask = masks.mask_tight(crop) if crop is not None else None
        if mask is None:
            return None, "polygon too thin to cover any pixel centre"
        return Outline(inst, polygon, mask, note), None
    if isinstance(geom, Mask):
        inside = geom
        if geom.left < 0 or geom.top < 0 or geom.left + geom.width > width or geom.top + geom.height > height:
            inside = masks.mask_from_bitmap(masks.mask_to_full(geom, width, height))
        else:
            inside = masks.mask_tight(geom)
        if inside is None:
            return None, "empty mask"
        polygons = masks.mask_to_polygons(inside.bitmap, inside.left, inside.top, min_area=1)
        if not polygons:
            return None, "mask has no outline"
        return Outline(inst, polygons[0], inside, polygons=polygons), None
    if isinstance(geom, Box):
        return None, "box has no outline; export needs polygons or masks"
    if isinstance(geom, Points):
        return None, "points have no outline; export needs polygons or masks"
    return None, f"unsupported shape {type(geom).__name__}"
