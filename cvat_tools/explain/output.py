"""What explain writes per image: the cell panels, the contact sheet and its record (shared by
``cvat-tools explain`` and ``predict --explain``)."""
from __future__ import annotations

import json
from pathlib import Path


def no_cells_note(path, threshold: float) -> str:
    return (f"{path}: no cells found at threshold {threshold:g}; no panel written (lower "
            "--threshold, or check that it is a stained blood smear)")


def save_explained(root: Path, rel: str, name: str, cells: list) -> dict:
    """Write one image's panels and contact sheet into the new folder ``root/rel`` (inside the
    output being built); return the image's record (paths relative to ``root``)."""
    from .cells import cell_panel, cell_record
    from .panels import contact_sheet, png_bytes

    folder = root / rel
    folder.mkdir(parents=True)
    panels, records = [], []
    for cell in cells:
        file = f"cell_{cell.index:03d}.png"
        panels.append(cell_panel(cell))
        (folder / file).write_bytes(png_bytes(panels[-1]))
        records.append(cell_record(cell, f"{rel}/{file}"))
    title = f"{name}: {len(cells)} cells (crop | mask | " + \
        " | ".join(a.name for a in cells[0].answers) + ")"
    (folder / "sheet.png").write_bytes(png_bytes(contact_sheet(panels, title)))
    return {"name": name, "sheet": f"{rel}/sheet.png", "cells": records}
