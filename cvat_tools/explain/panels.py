"""Pictures of explained cells: one panel per cell and a contact sheet per image (cv2 only:
matplotlib would cost more per cell than the explanation itself).

    panel:  [ crop | mask | heat of model 1 | heat of model 2 ]   tiles of TILE px
            [ caption under each tile: cell, label, top-3 scores per model ]
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TILE = 192  # px per tile: a 160 px crop, a little enlarged for reading
CAPTION = 74  # px of text under the tiles
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (20, 20, 20)
OUTLINE = (255, 255, 255)
SHEET_COLUMNS = 4
SHEET_SCALE = 0.5  # panels shrink by this much on the contact sheet


@dataclass
class Tile:
    """One picture of a panel with the caption lines under it."""

    image: np.ndarray  # RGB uint8, any square size
    lines: list[str]


def heat_overlay(crop: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The crop with the heat map (values in [0, 1]) blended over it in the jet colours."""
    heat = cv2.resize(np.asarray(heat, np.float32), crop.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(crop, 1 - alpha, colour, alpha, 0)


def outline(image: np.ndarray, mask: np.ndarray, colour=OUTLINE) -> np.ndarray:
    """``image`` with the outline of ``mask`` (same height and width) drawn on a copy."""
    contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = image.copy()
    cv2.drawContours(out, contours, -1, colour, 1, cv2.LINE_AA)
    return out


def mask_tile(mask: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(mask, np.uint8)[..., None] * 255, 3, axis=2)


def top_lines(name: str, prediction, k: int = 3) -> list[str]:
    """Caption of a model's tile: its name and its top-k labels with their scores."""
    return [name] + [f"{label[:14]} {score:.2f}" for label, score in prediction.top(k)]


def panel(tiles: list[Tile], tile: int = TILE) -> np.ndarray:
    """Tiles side by side, each resized to ``tile`` px, with its caption under it."""
    canvas = np.full((tile + CAPTION, tile * len(tiles), 3), 255, np.uint8)
    for i, item in enumerate(tiles):
        interp = cv2.INTER_NEAREST if item.image.shape[0] < tile else cv2.INTER_AREA
        canvas[:tile, i * tile:(i + 1) * tile] = cv2.resize(item.image, (tile, tile), interpolation=interp)
        for j, line in enumerate(item.lines[:4]):
            cv2.putText(canvas, line, (i * tile + 4, tile + 16 + 17 * j), FONT, 0.45,
                        INK, 1, cv2.LINE_AA)
    cv2.line(canvas, (0, tile), (canvas.shape[1], tile), (200, 200, 200), 1)
    return canvas


def contact_sheet(panels: list[np.ndarray], title: str, columns: int = SHEET_COLUMNS,
                  scale: float = SHEET_SCALE) -> np.ndarray:
    """Panels of one image in a grid (row by row, cell order), under a title line."""
    if not panels:
        raise ValueError("no panels: an image without cells gets no contact sheet")
    small = [cv2.resize(p, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for p in panels]
    h = max(p.shape[0] for p in small)
    w = max(p.shape[1] for p in small)
    columns = max(1, min(columns, len(small)))
    rows = -(-len(small) // columns)
    head = 28
    sheet = np.full((head + rows * (h + 4), columns * (w + 4), 3), 255, np.uint8)
    cv2.putText(sheet, title[:120], (4, 19), FONT, 0.55, INK, 1, cv2.LINE_AA)
    for k, p in enumerate(small):
        r, c = divmod(k, columns)
        y, x = head + r * (h + 4), c * (w + 4)
        sheet[y:y + p.shape[0], x:x + p.shape[1]] = p
    return sheet


def png_bytes(image: np.ndarray, level: int = 3) -> bytes:
    """RGB uint8 -> PNG bytes. Fast zlib level: Pillow's ``optimize`` costs ~0.5 s per panel,
    more than the explanation, for ~10 % smaller files."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()
