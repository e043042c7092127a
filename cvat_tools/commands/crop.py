"""``cvat-tools crop IN_DIR --out OUT_DIR``: "PBC Cropped" from single-cell images.

Each image's centre cell is found (the scale-aware segmenter's centre instance, the classical
``centre_cell_mask`` only when it finds none: segment/single_cell.py ``centre_cell``), cropped
square around its mask and masked (``crops.cell_crop``), written under the same class
sub-folder. The output folder appears only when every readable image is done; images without
a cell are listed.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from .scale_options import checked, scale_options


@click.command("crop")
@click.argument("in_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="output folder: new, or an earlier crop output (replaced as a whole when done)")
@click.option("--size", type=int, default=None, help="resize each crop to SIZE x SIZE px")
@click.option("--keep-background", is_flag=True, help="keep the context around the cell (no masking)")
@scale_options
def crop(in_dir: str, out_dir: str, size: int | None, keep_background: bool,
         cell_size: float | None = None, um_per_px: float | None = None):
    """Crop and mask the centre cell of every single-cell image under IN_DIR (PBC layout:
    IN_DIR/<class>/<image>), keeping the class sub-folders."""
    import cv2
    from tqdm import tqdm

    from ..atomic import atomic_dir
    from ..crops import BACKGROUND, cell_crop
    from ..errors import ImageError
    from ..imaging import list_images, load_image
    from ..outdir import check_out
    from ..models.registry import load_segmenter
    from ..segment.single_cell import centre_cell

    src, dst = Path(in_dir).resolve(), Path(out_dir).resolve()
    if dst == src or src in dst.parents:
        raise InputError(f"--out {out_dir} is inside IN_DIR; choose a folder outside it")
    if dst in src.parents:
        raise InputError(f"--out {out_dir} contains IN_DIR; choose a folder outside it")
    check_out(out_dir, "crop")
    if size is not None and size < 8:
        raise InputError(f"--size {size} is too small; use at least 8 px")
    scale_args = checked(cell_size, um_per_px)
    images = list_images(src)
    if not images:
        raise InputError(f"{in_dir}: no images found (jpg, png, tif, bmp, webp)")
    segmenter = load_segmenter(None)
    if hasattr(segmenter, "set_scale"):
        segmenter.set_scale("auto", **scale_args)
    failed: list[tuple[Path, str]] = []
    with atomic_dir(dst, command="crop") as tmp:
        for path in tqdm(images, desc="crop", unit="img", dynamic_ncols=True):
            rel = path.relative_to(src)
            try:
                image = load_image(path)
            except ImageError as exc:
                failed.append((rel, str(exc)))
                continue
            det, _source = centre_cell(segmenter, image)
            if det is None:
                failed.append((rel, "no cell found near the centre"))
                continue
            out = cell_crop(image, det.mask.bitmap, det.mask.left, det.mask.top, size=size,
                            background=None if keep_background else BACKGROUND)
            target = (tmp / rel).with_suffix(".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    click.echo(f"cropped {len(images) - len(failed)} of {len(images)} images into {out_dir}")
    if failed:
        click.echo(f"{len(failed)} images without a crop:", err=True)
        for rel, why in failed:
            click.echo(f"  {rel}: {why}", err=True)
        raise SystemExit(1)
