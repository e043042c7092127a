"""``--cell-size`` / ``--um-per-px``: one declaration for every command that segments.

Both are checked (cvat_tools.scale.check_cell_size) before any model loads, so a bad value is
a one-line error (exit 2) and not a failure per image.
"""
from __future__ import annotations

import click

CELL_SIZE_HELP = ("Typical WBC diameter in the input images, px (8-2000); default: estimated "
                  "per image from the red cells.")
UM_PER_PX_HELP = ("Microns per input pixel (the microscope's calibration); WBCs are taken as "
                  "13 um across. Default: estimated per image.")


def scale_options(command):
    """Add --cell-size and --um-per-px (keyword arguments cell_size, um_per_px)."""
    command = click.option("--um-per-px", "um_per_px", type=float, default=None,
                           help=UM_PER_PX_HELP)(command)
    return click.option("--cell-size", "cell_size", type=float, default=None,
                        metavar="PX", help=CELL_SIZE_HELP)(command)


def checked(cell_size: float | None, um_per_px: float | None) -> dict:
    """The scale keyword arguments, validated (InputError on a value out of range)."""
    from ..scale import check_cell_size

    if cell_size is not None and um_per_px is not None:
        from ..errors import InputError

        raise InputError("give --cell-size or --um-per-px, not both")
    check_cell_size(cell_size, um_per_px)
    return {"cell_size": cell_size, "um_per_px": um_per_px}
