"""``cvat-tools convert INPUT... --to FORMAT --out OUT [--images DIR]``: annotations from one
format to another, without images unless ``--images`` is given.

Reads everything ``export`` reads (CVAT XML, COCO, Datumaro, YOLO, thesis JSON, folders, the
export .zip); image sizes come from the annotations (YOLO input, whose coordinates are
relative, needs ``--images`` or its own images). Several inputs are merged; an image name two
inputs share is an error naming both. OUT is laid out as CVAT exports the format, so it can be
zipped and uploaded to CVAT as it is::

    cvat      OUT/annotations.xml                       + images/<name>
    coco      OUT/annotations/instances_default.json    + images/<name>
    datumaro  OUT/annotations/default.json              + images/default/<name>
    yolo      OUT/data.yaml, train.txt, labels/train/   + images/train/<name>
    json      OUT/annotations.json (thesis JSON)        + images/<name>

What the target format cannot hold is said on stderr (``LOSSES``; docs/reference.md) and
every shape left out is listed; Datumaro and CVAT XML keep everything but CVAT XML has no
score.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import InputError
from ..formats.annotations import Box, Dataset, LabelSpec, Mask

TARGETS = {  # --to -> (file under OUT, folder under OUT for the images)
    "cvat": ("annotations.xml", "images"),
    "coco": ("annotations/instances_default.json", "images"),
    "datumaro": ("annotations/default.json", "images/default"),
    "yolo": (".", "images/train"),
    "json": ("annotations.json", "images"),
}


def _count(dataset: Dataset, test) -> int:
    return sum(1 for im in dataset.images for inst in im.instances if test(inst))


def losses(dataset: Dataset, target: str) -> list[str]:
    """What writing ``dataset`` as ``target`` cannot keep, one phrase each (with counts)."""
    checks = {
        "score": lambda i: i.score is not None,
        "attributes": lambda i: bool(i.attributes),
        "occluded": lambda i: i.occluded,
        "z_order": lambda i: i.z_order != 0,
        "group": lambda i: bool(i.group),
        "source": lambda i: (i.source or "manual") != "manual",
        "boxes become polygons": lambda i: isinstance(i.geometry, Box),
        "masks become traced polygons": lambda i: isinstance(i.geometry, Mask),
    }
    dropped = {
        "cvat": ["score"],
        "coco": [],
        "datumaro": [],
        "yolo": list(checks),
        "json": [k for k in checks if k != "score"],
    }[target]
    out = [f"{key} ({n} shape{'s' if n != 1 else ''})" for key in dropped
           if (n := _count(dataset, checks[key]))]
    if target in ("yolo", "json") and any(spec.attributes or spec.color for spec in dataset.labels):
        out.append("label declarations (attribute types and values, colours)")
    return out


def merge(datasets: list[Dataset]) -> Dataset:
    """One dataset of several (names already checked distinct); image ids kept when unique."""
    merged = Dataset()
    for ds in datasets:
        merged.images.extend(ds.images)
        merged.skipped.extend(ds.skipped)
        known = {spec.name for spec in merged.labels}
        merged.labels.extend(spec for spec in ds.labels if spec.name not in known)
    if merged.labels:  # an input that declares none: its labels join the declared ones
        known = {spec.name for spec in merged.labels}
        merged.labels.extend(LabelSpec(n) for n in merged.all_label_names() if n not in known)
    ids = [im.id for im in merged.images]
    if None in ids or len(set(ids)) != len(ids):
        for index, image in enumerate(merged.images):
            image.id = index
    return merged


def _image_files(dataset: Dataset, images: Path, out: Path) -> dict[str, Path]:
    """image name -> file under --images, every one present and of the annotated size."""
    from ..formats.image_files import ImageIndex
    from ..imaging import image_size

    index = ImageIndex.of(images, exclude=(out,))
    found, missing, wrong = {}, [], []
    for image in dataset.images:
        path = index.find(image.name, f"--images {images}")
        if path is None:
            missing.append(image.name)
        elif image_size(path) != (image.width, image.height):
            w, h = image_size(path)
            wrong.append(f"{path} is {w}x{h}, annotated as {image.width}x{image.height}")
        else:
            found[image.name] = path
    if missing:
        raise InputError(f"--images {images}: {len(missing)} annotated image(s) not found: "
                         + ", ".join(repr(n)[:80] for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
                         + "; give the folder that holds them, or leave --images out to convert annotations only")
    if wrong:
        raise InputError(f"--images {images}: image size differs from the annotation (EXIF rotation applied): "
                         + "; ".join(wrong[:3]) + ". These annotations belong to other versions of the images")
    return found


def _write(dataset: Dataset, target: str, tmp: Path, files: dict[str, Path]) -> None:
    from ..formats.io import write_annotations
    from ..formats.safe_names import join_inside
    from ..formats.yolo import write_yolo
    from .export import link_or_copy

    name, image_folder = TARGETS[target]
    if target == "yolo":
        write_yolo(dataset, tmp / "yolo", image_files=files)
        for part in (tmp / "yolo").iterdir():
            part.rename(tmp / part.name)
        (tmp / "yolo").rmdir()
        return
    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    write_annotations(dataset, tmp / name, {"json": "thesis"}.get(target, target))
    for image_name, src in files.items():
        # the annotation names the image by its relative path: keep it, safely, under images/
        dst = join_inside(tmp / image_folder, image_name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(src, dst)


@dataclass
class _Opened:
    path: Path
    dataset: Dataset


def run_convert(inputs: list, target: str, out: str | Path, images: str | Path | None = None,
                format: str = "auto") -> tuple[Dataset, list[str]]:
    """Convert; returns the merged dataset (its ``skipped`` filled by the writers) and the losses."""
    from ..atomic import atomic_dir
    from ..formats.io import open_annotations
    from ..outdir import check_out
    from .export import check_name_clashes

    inputs, out = [Path(p) for p in inputs], Path(out)
    if target not in TARGETS:
        raise InputError(f"--to {target}: choose one of {', '.join(TARGETS)}")
    if images is not None and not Path(images).is_dir():
        raise InputError(f"--images {images}: no such folder")
    images = Path(images) if images else None
    check_out(out, "convert", inputs=inputs + ([images] if images else []))
    with contextlib.ExitStack() as stack:
        sources = []
        for path in inputs:
            dataset, _, _ = stack.enter_context(open_annotations(path, format, images))
            sources.append(_Opened(path, dataset))
        check_name_clashes(sources, "convert them separately")
        dataset = merge([s.dataset for s in sources])
    if not dataset.images:
        raise InputError(f"{', '.join(map(str, inputs))}: no images in the annotations; nothing to convert")
    files = _image_files(dataset, images, out) if images else {}
    lost = losses(dataset, target)
    with atomic_dir(out, command="convert") as tmp:
        _write(dataset, target, tmp, files)
    return dataset, lost


@click.command("convert")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True), metavar="INPUT...")
@click.option("--to", "target", required=True, type=click.Choice(list(TARGETS)),
              help="cvat: CVAT for images 1.1 XML; coco: COCO 1.0; datumaro: Datumaro 1.0 (CVAT's "
                   "lossless format); yolo: Ultralytics YOLO segmentation; json: thesis JSON.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder, laid out as CVAT exports the format (must be new, empty or an "
                   "earlier convert output).")
@click.option("--images", type=click.Path(file_okay=False),
              help="Folder with the annotated images: copied into OUT (and sizes checked). "
                   "Without it only the annotations are written.")
@click.option("--format", "fmt", type=click.Choice(["auto", "cvat", "coco", "datumaro", "yolo", "thesis"]),
              default="auto", show_default=True, help="Annotation format of the inputs.")
def convert(inputs, target, out, images, fmt):
    """Convert annotations between CVAT XML, COCO, Datumaro, YOLO and thesis JSON."""
    dataset, lost = run_convert(list(inputs), target, out, images, fmt)
    shapes = sum(len(im.instances) for im in dataset.images)
    written = "with images" if images else "annotations only"
    click.echo(f"converted {shapes} shapes on {len(dataset.images)} images to {target} ({written}) -> {out}")
    if lost:
        click.echo(f"warning: {target} cannot hold: " + ", ".join(lost)
                   + "; use --to datumaro (or cvat) to keep them", err=True)
    if target == "yolo" and not images:
        click.echo("note: no images given, so train.txt lists none (it may only name files that "
                   "exist); pass --images to copy them and list them", err=True)
    if dataset.skipped:
        click.echo(f"{len(dataset.skipped)} shape(s) left out:", err=True)
        for item in dataset.skipped[:10]:
            click.echo(f"  {item['image']}: {item['label']}: {item['reason']}", err=True)
