"""``cvat-tools export ANNOTATIONS... [--images DIR] --out DIR``: CVAT exports become a training set.

Each ANNOTATIONS is a CVAT for images 1.1 XML, a COCO 1.0 JSON, a Datumaro 1.0 JSON, an
Ultralytics YOLO segmentation folder (or its data.yaml), a thesis JSON, a folder holding one
of them, a folder ``export`` itself wrote, or the CVAT export ``.zip`` itself (checked for
``..``/absolute members, links and zip bombs). Labels are mapped onto the project's label set
(``labels.py``; ``--label-map`` for other names).

Images are looked up (formats/image_files.py: relative name, then a unique base name) under
``--images``, else inside the zip (anywhere in it), else in ``images/`` beside the annotations,
else beside the annotations (sub-folders included; an earlier ``--out`` there is skipped).
Several inputs are merged; an image name that two inputs both use is an error naming both
(they may be different pictures: export them separately or rename one).

The training folder (``--out``), read by ``cvat-tools train segmenter --data DIR`` and by the
classifier's crop reader::

    OUT/
      annotations.json        COCO instances: one category per label (ids from 1, in the
                              project's label order), images with file_name (under images/),
                              width, height; one annotation per cell with a polygon
                              segmentation [[x1, y1, ...]] (pixel-edge coordinates, CVAT's
                              convention; a bitmap mask of several parts gives one ring per
                              part), bbox [x, y, w, h], area (mask pixels), iscrowd 0, attributes
                              (occluded, z_order, ...), "mask_file" and "source_label"
      images/<name>           the annotated images (hard links where possible, else copies)
      masks/<stem>_<k>.png    one 8-bit PNG per cell, full image size, 0 background / 255
                              cell; k numbers the image's exported cells from 0 (= the order of
                              its annotations in annotations.json)
      crops/<label>/<stem>_<k>.png   (--crops) the cell cut out by crops.cell_crop, the
                              classifier's input format (square, masked, --crop-size px);
                              <label> is the label with "_" for spaces (band_cell)
      manifest.json           inputs (file, format, where the images came from: a folder, or
                              the zip and its member names), label map, counts per class,
                              images, every skipped shape (image, label, reason) and every
                              repaired one

Shapes that cannot be a cell outline (boxes, points, polygons with fewer than 3 points or no
area, empty masks) are skipped and listed; self-intersecting polygons are repaired (the
largest valid piece is kept) and listed; ``--strict`` makes either an error. Missing images,
images whose size (after EXIF rotation) differs from the annotation, and unknown labels stop
the export with an error naming the file; the output folder is written whole or not at all.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..errors import InputError
from ..formats.annotations import Dataset, ImageAnnotation

MANIFEST = "manifest.json"


@dataclass
class Source:
    """One ANNOTATIONS input, opened: its dataset and where its images are."""

    path: Path
    format: str
    dataset: Dataset
    images_dir: Path
    zipped: bool
    files: list[Path | None] = field(default_factory=list)
    source_labels: dict[int, str] = field(default_factory=dict)

    def origin(self, file: Path) -> dict:
        """Where an image came from, valid after the run (a zip's temp folder is not)."""
        if self.zipped:
            return {"zip": str(self.path), "member": file.relative_to(self.images_dir).as_posix()}
        return {"file": str(file)}


def _output_names(names: list[str]) -> list[str]:
    """File names under images/ (flat, safe, distinct stems): see formats.safe_names."""
    from ..formats.safe_names import unique_file_names

    return unique_file_names(names)


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _label_folder(label: str) -> str:
    from ..formats.safe_names import safe_component

    return safe_component(label.replace(" ", "_").replace("/", "_"), "label")


def _check_out(out: Path, sources: list[Path]) -> None:
    from ..outdir import check_out

    check_out(out, "export")
    resolved = out.resolve()
    for src in sources:
        src = src.resolve()
        if resolved == src or resolved in src.parents or src in resolved.parents:
            raise InputError(f"--out {out} overlaps the input {src}; choose a folder outside it")


def check_name_clashes(sources: list, what: str = "export them separately") -> None:
    """An image name used by two inputs is refused: it may name two different pictures."""
    seen: dict[str, Path] = {}
    for source in sources:
        for image in source.dataset.images:
            first = seen.setdefault(image.name, source.path)
            if first != source.path:
                raise InputError(f"image {image.name!r} is in both {first} and {source.path}; {what} "
                                 "(to different --out folders) or rename the image in one of them")


def _open_sources(stack: contextlib.ExitStack, inputs: list[Path], images: Path | None, fmt: str,
                  label_map: dict | None, out: Path) -> list[Source]:
    from ..formats.io import open_annotations
    from ..formats.labelmap import apply_label_map

    sources = []
    for path in inputs:
        dataset, own, detected = stack.enter_context(open_annotations(path, fmt, images))
        source = Source(path, detected, dataset, images or own, zipped=path.suffix.lower() == ".zip"
                        and path.is_file())
        source.source_labels = {id(inst): inst.label for im in dataset.images for inst in im.instances}
        apply_label_map(dataset, label_map, str(path))
        if not dataset.images:
            raise InputError(f"{path}: no images in the annotations; nothing to export")
        sources.append(source)
    check_name_clashes(sources)
    return sources


def _locate_images(source: Source, out: Path) -> None:
    """Every annotated image found and of the annotated size, before anything is written."""
    from ..formats.image_files import ImageIndex
    from ..imaging import image_size

    index = ImageIndex.of(source.images_dir, exclude=(out,))
    missing, wrong_size = [], []
    for image in source.dataset.images:
        path = index.find(image.name, str(source.path))
        source.files.append(path)
        if path is None:
            missing.append(image.name)
            continue
        size = image_size(path)
        if size != (image.width, image.height):
            wrong_size.append(f"{path} is {size[0]}x{size[1]}, annotated as {image.width}x{image.height}")
    where = f"{source.path} (inside the zip)" if source.zipped else str(source.images_dir)
    if missing:
        shown = ", ".join(n if len(n) <= 80 else n[:77] + "..." for n in missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{source.path}: {len(missing)} annotated image(s) not found under "
                         f"{where}: {shown}; pass --images pointing at the folder that holds them")
    if wrong_size:
        shown = "; ".join(wrong_size[:3]) + (f"; and {len(wrong_size) - 3} more" if len(wrong_size) > 3 else "")
        raise InputError(f"{source.path}: image size differs from the annotation (EXIF rotation "
                         f"applied): {shown}. These annotations belong to other versions of the images")


@dataclass
class _Writer:
    """Writes one image's cells (mask PNGs, crops, COCO annotations) into the temp output."""

    tmp: Path
    out: Path
    category: dict[str, int]
    crops: bool
    crop_size: int | None
    coco: dict
    per_class: Counter = field(default_factory=Counter)
    skipped: list = field(default_factory=list)
    repaired: list = field(default_factory=list)

    def image(self, image: ImageAnnotation, path: Path, out_name: str, source_labels: dict) -> None:
        from ..imaging import load_image

        link_or_copy(path, self.tmp / "images" / out_name)
        image_id = len(self.coco["images"]) + 1
        self.coco["images"].append({"id": image_id, "file_name": out_name,
                                    "width": image.width, "height": image.height})
        pixels = load_image(path) if self.crops else None
        k = 0
        for inst in image.instances:
            if self._cell(image, inst, image_id, Path(out_name).stem, k, pixels, source_labels):
                k += 1

    def _cell(self, image, inst, image_id, stem, k, pixels, source_labels) -> bool:
        import cv2
        import numpy as np

        from ..crops import cell_crop
        from ..formats.clean import outline_instance

        outline, reason = outline_instance(inst, image.width, image.height)
        if outline is None:
            self.skipped.append({"image": image.name, "label": inst.label, "reason": reason})
            return False
        if outline.note:
            self.repaired.append({"image": image.name, "label": inst.label, "note": outline.note})
        m = outline.mask
        full = np.zeros((image.height, image.width), dtype=np.uint8)
        full[m.top:m.top + m.height, m.left:m.left + m.width][m.bitmap] = 255
        mask_file = f"masks/{stem}_{k}.png"
        if not cv2.imwrite(str(self.tmp / mask_file), full):
            raise InputError(f"{self.out}: cannot write {mask_file} (disk full?)")
        if pixels is not None:
            crop = cell_crop(pixels, m.bitmap, m.left, m.top, size=self.crop_size)
            folder = self.tmp / "crops" / _label_folder(inst.label)
            folder.mkdir(exist_ok=True)
            cv2.imwrite(str(folder / f"{stem}_{k}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        xs = [p[0] for ring in outline.polygons for p in ring]
        ys = [p[1] for ring in outline.polygons for p in ring]
        ann = {
            "id": len(self.coco["annotations"]) + 1, "image_id": image_id,
            "category_id": self.category[inst.label],
            "segmentation": [[round(v, 3) for xy in ring for v in xy] for ring in outline.polygons],
            "area": int(m.bitmap.sum()),
            "bbox": [round(min(xs), 3), round(min(ys), 3), round(max(xs) - min(xs), 3), round(max(ys) - min(ys), 3)],
            "iscrowd": 0,
            "attributes": {"occluded": bool(inst.occluded), "z_order": inst.z_order, **inst.attributes},
            "mask_file": mask_file, "source_label": source_labels.get(id(inst), inst.label),
        }
        if inst.score is not None:
            ann["score"] = inst.score
        self.coco["annotations"].append(ann)
        self.per_class[inst.label] += 1
        return True


def _check_strict(writer: _Writer, inputs: list[Path]) -> None:
    if not (writer.skipped or writer.repaired):
        return
    problems = [f"{x['image']}: {x['label']}: {x.get('reason') or x.get('note')}"
                for x in writer.skipped + writer.repaired]
    raise InputError(f"{', '.join(map(str, inputs))}: --strict and {len(problems)} shape(s) skipped or "
                     "repaired: " + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
                     + ". Fix them in CVAT or drop --strict to export the rest")


def run_export(
    annotations: str | Path | list,
    images: str | Path | None,
    out: str | Path,
    format: str = "auto",
    label_map_file: str | Path | None = None,
    crops: bool = False,
    crop_size: int | None = None,
    progress: bool = True,
    strict: bool = False,
) -> dict:
    """The export itself (the click command is a thin wrapper); returns the manifest."""
    from tqdm import tqdm

    from ..atomic import atomic_dir
    from ..formats.labelmap import load_label_map
    from ..labels import ALL_CLASSES

    inputs = [Path(a) for a in (annotations if isinstance(annotations, (list, tuple)) else [annotations])]
    out = Path(out)
    if not inputs:
        raise InputError("no annotations given; name at least one file, folder or zip")
    if crop_size is not None and crop_size < 8:
        raise InputError(f"--crop-size {crop_size} is too small; use at least 8 px")
    if images is not None and not Path(images).is_dir():
        raise InputError(f"--images {images}: no such folder")
    _check_out(out, inputs + ([Path(images)] if images else []))
    label_map = load_label_map(label_map_file) if label_map_file else None

    with contextlib.ExitStack() as stack:
        sources = _open_sources(stack, inputs, Path(images) if images else None, format, label_map, out)
        for source in sources:
            _locate_images(source, out)
        used = {i.label for s in sources for im in s.dataset.images for i in im.instances}
        used |= {n for s in sources for n in s.dataset.label_names()}
        order = [n for n in ALL_CLASSES if n in used]
        category = {name: k + 1 for k, name in enumerate(order)}
        name = inputs[0].name if len(inputs) == 1 else f"{len(inputs)} inputs"
        coco = {"info": {"description": f"cvat-tools export of {name}"}, "licenses": [], "images": [],
                "annotations": [], "categories": [{"id": category[n], "name": n, "supercategory": "cell"}
                                                  for n in order]}
        jobs = [(s, image, path) for s in sources for image, path in zip(s.dataset.images, s.files)]
        out_names = _output_names([image.name for _, image, _ in jobs])
        with atomic_dir(out, command="export") as tmp:
            for sub in ("images", "masks") + (("crops",) if crops else ()):
                (tmp / sub).mkdir()
            writer = _Writer(tmp, out, category, crops, crop_size, coco,
                             skipped=[x for s in sources for x in s.dataset.skipped])
            bar = tqdm(list(zip(jobs, out_names)), desc="export", unit="img", dynamic_ncols=True,
                       disable=not progress or None)
            for (source, image, path), out_name in bar:
                writer.image(image, path, out_name, source.source_labels)
            if strict:
                _check_strict(writer, inputs)
            (tmp / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
            manifest = _manifest(sources, jobs, out_names, writer, order, label_map_file, crops, crop_size)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _manifest(sources, jobs, out_names, writer: _Writer, order, label_map_file, crops, crop_size) -> dict:
    return {
        "source": str(sources[0].path) if len(sources) == 1 else [str(s.path) for s in sources],
        "format": sources[0].format if len(sources) == 1 else [s.format for s in sources],
        "inputs": [{"source": str(s.path), "format": s.format,
                    "images_from": f"{s.path} (zip)" if s.zipped else str(s.images_dir)} for s in sources],
        "label_map": str(label_map_file) if label_map_file else None,
        "images": len(writer.coco["images"]),
        "instances": len(writer.coco["annotations"]),
        "per_class": {n: writer.per_class[n] for n in order if writer.per_class[n]},
        "crops": bool(crops),
        "crop_size": crop_size,
        # where each written image came from; a zip's temp folder is gone after the run
        "image_files": [{"image": image.name, "written_as": f"images/{name}", **source.origin(path)}
                        for (source, image, path), name in zip(jobs, out_names)],
        "skipped": writer.skipped,
        "repaired": writer.repaired,
    }


@click.command("export")
@click.argument("annotations", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--images", "images", type=click.Path(file_okay=False),
              help="folder with the annotated images (default: inside the zip, images/ beside the "
                   "annotations, or beside them)")
@click.option("--out", "out", required=True, type=click.Path(),
              help="training folder to write (annotations.json, images/, masks/, manifest.json)")
@click.option("--format", "fmt", type=click.Choice(["auto", "cvat", "coco", "datumaro", "yolo", "thesis"]),
              default="auto", show_default=True, help="annotation format of ANNOTATIONS")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON mapping of label names in the file to the project's labels")
@click.option("--crops", is_flag=True, help="also write masked per-cell crops under crops/<label>/")
@click.option("--crop-size", type=int, default=None, help="resize crops to N x N px (default: natural size)")
@click.option("--strict", is_flag=True, help="fail (write nothing) if any shape would be skipped or repaired")
def export(annotations, images, out, fmt, label_map, crops, crop_size, strict):
    """Turn CVAT annotations (XML, COCO, Datumaro, YOLO, thesis JSON or the export .zip; one or
    several) into a training folder: COCO annotations.json + images/ + one PNG mask per cell."""
    manifest = run_export(list(annotations), images, out, fmt, label_map, crops, crop_size, strict=strict)
    click.echo(f"exported {manifest['instances']} cells from {manifest['images']} images to {out}: "
               + ", ".join(f"{n} {c}" for n, c in manifest["per_class"].items()))
    if manifest["skipped"]:
        click.echo(f"{len(manifest['skipped'])} shape(s) skipped (see {Path(out) / MANIFEST}):", err=True)
        for item in manifest["skipped"][:10]:
            click.echo(f"  {item['image']}: {item['label']}: {item['reason']}", err=True)
    if manifest["repaired"]:
        click.echo(f"{len(manifest['repaired'])} polygon(s) repaired (listed in the manifest)", err=True)
