"""Speed of ``cvat-tools export`` on the real RV-PBS CVAT XML (4032x3024 smear photographs).

The RV-PBS images are not shipped with the data, so each annotated image is replaced by a
synthetic JPEG of the annotated size (the export's cost is the masks, PNGs and crops, not the
pixel content). Usage:

    python benchmarks/export_speed.py [--xml ../shared/data/cvat_xml/NEUTROPHILS.xml] [--crops]

Prints images, cells, wall seconds and seconds per image.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cvat_tools.commands.export import run_export
from cvat_tools.formats.cvat_xml import read_cvat_xml

from _data import DATA


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--xml", type=Path, default=DATA / "cvat_xml" / "NEUTROPHILS.xml")
    parser.add_argument("--crops", action="store_true")
    args = parser.parse_args()
    dataset = read_cvat_xml(args.xml)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for image in dataset.images:
            pixels = rng.integers(150, 230, (image.height // 8, image.width // 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((image.width, image.height)).save(images / image.name, quality=90)
        start = time.perf_counter()
        manifest = run_export(args.xml, images, Path(tmp) / "out", crops=args.crops, crop_size=224, progress=False)
        wall = time.perf_counter() - start
    n = manifest["images"]
    print(f"{args.xml.name}: {n} images, {manifest['instances']} cells, crops={args.crops}: "
          f"{wall:.2f} s ({wall / n:.2f} s/image)")


if __name__ == "__main__":
    main()
