"""``cvat-tools export ANNOTATIONS --images DIR --out DIR``: a CVAT export becomes a training set.

ANNOTATIONS is a CVAT for images 1.1 XML, a COCO 1.0 JSON, an Ultralytics YOLO segmentation
folder (or its data.yaml), a thesis JSON, a folder holding one of them, or the CVAT export
``.zip`` itself (checked for ``..``/absolute members, links and zip bombs). Labels are mapped
onto the project's label set (``labels.py``; ``--label-map`` for other names).

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
      manifest.json           source file and format, label map, counts per class, images,
                              every skipped shape (image, label, reason) and every repaired one

Shapes that cannot be a cell outline (boxes, points, polygons with fewer than 3 points or no
area, empty masks) are skipped and listed; self-intersecting polygons are repaired (the
largest valid piece is kept) and listed; ``--strict`` makes either an error. Missing images,
images whose size (after EXIF rotation) differs from the annotation, and unknown labels stop
the export with an error naming the file; the output folder is written whole or not at all.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath

import click

from ..errors import InputError

MANIFEST = "manifest.json"


def _image_index(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Relative posix path -> file, and file name -> files, for every image under ``folder``."""
    from ..imaging import list_images

    by_rel: dict[str, Path] = {}
    by_name: dict[str, list[Path]] = {}
    for path in list_images(folder):
        by_rel[path.relative_to(folder).as_posix()] = path
        by_name.setdefault(path.name, []).append(path)
    return by_rel, by_name


def _find_image(name: str, by_rel: dict[str, Path], by_name: dict[str, list[Path]]) -> Path | None:
    from ..formats.safe_names import safe_relative

    # only looked up in the index of files under --images: a name can never reach outside it
    rel = safe_relative(name)
    if rel.as_posix() in by_rel:
        return by_rel[rel.as_posix()]
    # CVAT names images by their upload path; the folder given may be any level of it
    for k in range(1, len(rel.parts)):
        tail = PurePosixPath(*rel.parts[k:]).as_posix()
        if tail in by_rel:
            return by_rel[tail]
    found = by_name.get(rel.name, [])
    return found[0] if len(found) == 1 else None


def _output_names(names: list[str]) -> list[str]:
    """File names under images/ (flat, safe, distinct stems): see formats.safe_names."""
    from ..formats.safe_names import unique_file_names

    return unique_file_names(names)


def _link_or_copy(src: Path, dst: Path) -> None:
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


def _image_files(dataset, images_dir: Path, annotations: Path) -> list[Path]:
    """Every annotated image's file, present and of the annotated size, before anything is written."""
    from ..imaging import image_size

    by_rel, by_name = _image_index(images_dir)
    files, missing, wrong_size = [], [], []
    for image in dataset.images:
        path = _find_image(image.name, by_rel, by_name)
        files.append(path)
        if path is None:
            missing.append(image.name)
            continue
        size = image_size(path)
        if size != (image.width, image.height):
            wrong_size.append(f"{path} is {size[0]}x{size[1]}, annotated as {image.width}x{image.height}")
    if missing:
        shown = ", ".join(n if len(n) <= 80 else n[:77] + "..." for n in missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{annotations}: {len(missing)} annotated image(s) not found under "
                         f"{images_dir}: {shown}; pass --images pointing at the folder that holds them")
    if wrong_size:
        shown = "; ".join(wrong_size[:3]) + (f"; and {len(wrong_size) - 3} more" if len(wrong_size) > 3 else "")
        raise InputError(f"{annotations}: image size differs from the annotation (EXIF rotation "
                         f"applied): {shown}. These annotations belong to other versions of the images")
    return files


def _export_instances(tmp: Path, out: Path, image, stem: str, pixels, crop_size: int | None,
                      skipped: list, repaired: list):
    """Write the mask (and with ``pixels`` the crop) of each of one image's instances; yield
    (instance, outline, mask file). Shapes that cannot be outlined go to ``skipped``."""
    import cv2
    import numpy as np

    from ..crops import cell_crop
    from ..formats.clean import outline_instance

    k = 0
    for inst in image.instances:
        outline, reason = outline_instance(inst, image.width, image.height)
        if outline is None:
            skipped.append({"image": image.name, "label": inst.label, "reason": reason})
            continue
        if outline.note:
            repaired.append({"image": image.name, "label": inst.label, "note": outline.note})
        m = outline.mask
        full = np.zeros((image.height, image.width), dtype=np.uint8)
        full[m.top:m.top + m.height, m.left:m.left + m.width][m.bitmap] = 255
        mask_file = f"masks/{stem}_{k}.png"
        if not cv2.imwrite(str(tmp / mask_file), full):
            raise InputError(f"{out}: cannot write {mask_file} (disk full?)")
        if pixels is not None:
            crop = cell_crop(pixels, m.bitmap, m.left, m.top, size=crop_size)
            folder = tmp / "crops" / _label_folder(inst.label)
            folder.mkdir(exist_ok=True)
            cv2.imwrite(str(folder / f"{stem}_{k}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        yield inst, outline, mask_file
        k += 1


def _coco_annotation(ann_id: int, image_id: int, category_id: int, inst, outline, mask_file: str,
                     source_label: str) -> dict:
    xs = [p[0] for ring in outline.polygons for p in ring]
    ys = [p[1] for ring in outline.polygons for p in ring]
    attributes = {"occluded": bool(inst.occluded), "z_order": inst.z_order, **inst.attributes}
    ann = {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "segmentation": [[round(v, 3) for xy in ring for v in xy] for ring in outline.polygons],
        "area": int(outline.mask.bitmap.sum()),
        "bbox": [round(min(xs), 3), round(min(ys), 3),
                 round(max(xs) - min(xs), 3), round(max(ys) - min(ys), 3)],
        "iscrowd": 0, "attributes": attributes,
        "mask_file": mask_file, "source_label": source_label,
    }
    if inst.score is not None:
        ann["score"] = inst.score
    return ann


def _coco_skeleton(dataset, annotations: Path) -> tuple[list[str], dict[str, int], dict]:
    """(label order, category id per label, the empty COCO document) of the labels in use,
    in labels.ALL_CLASSES order."""
    from ..labels import ALL_CLASSES

    order = [n for n in ALL_CLASSES if n in set(dataset.label_names()) |
             {i.label for im in dataset.images for i in im.instances}]
    category = {name: k + 1 for k, name in enumerate(order)}
    coco = {"info": {"description": f"cvat-tools export of {annotations.name}"},
            "licenses": [], "images": [], "annotations": [],
            "categories": [{"id": category[n], "name": n, "supercategory": "cell"} for n in order]}
    return order, category, coco


def _refuse_if_strict(annotations: Path, skipped: list, repaired: list) -> None:
    problems = [f"{x['image']}: {x['label']}: {x.get('reason') or x.get('note')}"
                for x in skipped + repaired]
    if problems:
        raise InputError(f"{annotations}: --strict and {len(problems)} shape(s) skipped or repaired: "
                         + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
                         + ". Fix them in CVAT or drop --strict to export the rest")


def run_export(
    annotations: str | Path,
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
    from ..formats.io import open_annotations
    from ..formats.labelmap import apply_label_map, load_label_map
    from ..imaging import load_image

    annotations, out = Path(annotations), Path(out)
    if crop_size is not None and crop_size < 8:
        raise InputError(f"--crop-size {crop_size} is too small; use at least 8 px")
    if images is not None and not Path(images).is_dir():
        raise InputError(f"--images {images}: no such folder")
    _check_out(out, [annotations] + ([Path(images)] if images else []))
    label_map = load_label_map(label_map_file) if label_map_file else None

    with open_annotations(annotations, format, images) as (dataset, own_images, detected):
        images_dir = Path(images) if images else own_images
        if images_dir is None:
            raise InputError(f"{annotations}: has no images of its own; pass --images DIR "
                             "(the folder with the annotated images)")
        source_labels = {id(inst): inst.label for im in dataset.images for inst in im.instances}
        apply_label_map(dataset, label_map, str(annotations))
        if not dataset.images:
            raise InputError(f"{annotations}: no images in the annotations; nothing to export")
        files = _image_files(dataset, images_dir, annotations)

        order, category, coco = _coco_skeleton(dataset, annotations)
        per_class: Counter[str] = Counter()
        skipped = list(dataset.skipped)
        repaired = []
        out_names = _output_names([im.name for im in dataset.images])

        with atomic_dir(out, command="export") as tmp:
            for sub in ("images", "masks") + (("crops",) if crops else ()):
                (tmp / sub).mkdir()
            bar = tqdm(list(zip(dataset.images, files, out_names)), desc="export", unit="img",
                       dynamic_ncols=True, disable=not progress or None)
            for image_id, (image, path, out_name) in enumerate(bar, 1):
                _link_or_copy(path, tmp / "images" / out_name)
                coco["images"].append({"id": image_id, "file_name": out_name,
                                       "width": image.width, "height": image.height})
                pixels = load_image(path) if crops else None
                for inst, outline, mask_file in _export_instances(
                        tmp, out, image, Path(out_name).stem, pixels, crop_size, skipped, repaired):
                    coco["annotations"].append(_coco_annotation(
                        len(coco["annotations"]) + 1, image_id, category[inst.label], inst, outline,
                        mask_file, source_labels.get(id(inst), inst.label)))
                    per_class[inst.label] += 1
            if strict:
                _refuse_if_strict(annotations, skipped, repaired)
            (tmp / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
            manifest = {
                "source": str(annotations),
                "format": detected,
                "images_dir": str(images_dir),
                "label_map": str(label_map_file) if label_map_file else None,
                "images": len(coco["images"]),
                "instances": len(coco["annotations"]),
                "per_class": {n: per_class[n] for n in order if per_class[n]},
                "crops": bool(crops),
                "crop_size": crop_size,
                "skipped": skipped,
                "repaired": repaired,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


@click.command("export")
@click.argument("annotations", type=click.Path(exists=True))
@click.option("--images", "images", type=click.Path(file_okay=False),
              help="folder with the annotated images (default: the images inside the export)")
@click.option("--out", "out", required=True, type=click.Path(),
              help="training folder to write (annotations.json, images/, masks/, manifest.json)")
@click.option("--format", "fmt", type=click.Choice(["auto", "cvat", "coco", "yolo", "thesis"]),
              default="auto", show_default=True, help="annotation format of ANNOTATIONS")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON mapping of label names in the file to the project's labels")
@click.option("--crops", is_flag=True, help="also write masked per-cell crops under crops/<label>/")
@click.option("--crop-size", type=int, default=None, help="resize crops to N x N px (default: natural size)")
@click.option("--strict", is_flag=True, help="fail (write nothing) if any shape would be skipped or repaired")
def export(annotations, images, out, fmt, label_map, crops, crop_size, strict):
    """Turn CVAT annotations (XML, COCO, YOLO, thesis JSON or the export .zip) into a
    training folder: COCO annotations.json + images/ + one PNG mask per cell (+ crops)."""
    manifest = run_export(annotations, images, out, fmt, label_map, crops, crop_size, strict=strict)
    click.echo(f"exported {manifest['instances']} cells from {manifest['images']} images to {out}: "
               + ", ".join(f"{n} {c}" for n, c in manifest["per_class"].items()))
    if manifest["skipped"]:
        click.echo(f"{len(manifest['skipped'])} shape(s) skipped (see {Path(out) / MANIFEST}):", err=True)
        for item in manifest["skipped"][:10]:
            click.echo(f"  {item['image']}: {item['label']}: {item['reason']}", err=True)
    if manifest["repaired"]:
        click.echo(f"{len(manifest['repaired'])} polygon(s) repaired (listed in the manifest)", err=True)
