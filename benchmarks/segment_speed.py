"""Seconds per image and peak memory of the segmenters on CPU.

    python benchmarks/segment_speed.py [--threads 2] [--repeats 5] [--json out.json]

Inputs: a real BCCD test field (640x480) and the same field upscaled to 4032x3024 (a phone
photograph of a smear shows WBCs ~800 px wide, as this one then does). Segmenters:
classical watershed, our Mask R-CNN (shipped bundle, or the same architecture with random
weights when none is shipped) and torchvision's maskrcnn_resnet50_fpn (random weights: timing
only), both R-CNNs through the same MaskRCNNSegmenter at the same working size. Also the
thesis comparison: centre_cell_mask on PBC 360x363 images (thesis Algorithm 1: 0.1448 s).

Each (segmenter, size) runs in its own process so that peak RSS (resource.getrusage) is that
case's own, torch import included.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _data import DATA

SIZES = {"640x480": (640, 480), "4032x3024": (4032, 3024)}
THESIS_ALG1_S = 0.1448


def _field(size: tuple[int, int]):
    import csv

    import cv2

    from cvat_tools.imaging import load_image

    with open(DATA / "bccd_wbc" / "index.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["split"] == "test")
    image = load_image(DATA / "bccd_wbc" / row["image"])
    if image.shape[1::-1] != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    return image


def _segmenter(name: str):
    from cvat_tools.bundle import shipped_bundle
    from cvat_tools.segment.classical import ClassicalSegmenter
    from cvat_tools.segment.maskrcnn import DEFAULT_ARCHITECTURE, MaskRCNNSegmenter, build_model

    if name == "classical":
        return ClassicalSegmenter()
    shipped = shipped_bundle("segmenter")
    if name == "maskrcnn_effnet_lite0":
        if shipped is not None:
            return MaskRCNNSegmenter.from_bundle(shipped)
        return MaskRCNNSegmenter(build_model(DEFAULT_ARCHITECTURE, pretrained=False), DEFAULT_ARCHITECTURE["long_side"])
    if name == "maskrcnn_resnet50_fpn":
        long_side = DEFAULT_ARCHITECTURE["long_side"]
        if shipped is not None:
            from cvat_tools.bundle import read_manifest

            long_side = int(read_manifest(shipped)["architecture"]["long_side"])
        return MaskRCNNSegmenter(build_model({"name": "resnet50_fpn", "long_side": long_side}), long_side)
    raise SystemExit(f"unknown segmenter {name}")


def run_one(name: str, size_key: str, threads: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import cv2

    cv2.setNumThreads(threads)
    if name == "centre_cell_mask":
        from cvat_tools.imaging import load_image
        from cvat_tools.segment.classical import centre_cell_mask

        paths = []
        for cls in sorted((DATA / "pbc").iterdir()):
            paths += sorted(cls.glob("*.jpg"))[:5]
        images = [load_image(p) for p in paths]
        centre_cell_mask(images[0])
        t0 = time.perf_counter()
        for image in images:
            centre_cell_mask(image)
        seconds = (time.perf_counter() - t0) / len(images)
        n = len(images)
    else:
        image = _field(SIZES[size_key])
        seg = _segmenter(name)
        seg.segment(image)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            dets = seg.segment(image)
        seconds = (time.perf_counter() - t0) / repeats
        n = len(dets)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"segmenter": name, "size": size_key, "seconds_per_image": seconds, "peak_rss_mb": peak_mb,
            "threads": threads, "detections_or_images": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--one", nargs=2, metavar=("SEGMENTER", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.threads, args.repeats)))
        return
    cases = [("centre_cell_mask", "PBC 360x363")]
    for size in SIZES:
        for name in ("classical", "maskrcnn_effnet_lite0", "maskrcnn_resnet50_fpn"):
            cases.append((name, size))
    rows = []
    for name, size in cases:
        repeats = args.repeats if size != "4032x3024" else max(1, args.repeats // 2)
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, size, "--threads", str(args.threads), "--repeats", str(repeats)],
            capture_output=True, text=True, check=True, env={**_env(), "OMP_NUM_THREADS": str(args.threads)},
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name:<24}{size:>14}{row['seconds_per_image']:>10.4f} s{row['peak_rss_mb']:>10.0f} MB", flush=True)
    by = {(r["segmenter"], r["size"]): r for r in rows}
    alg1 = by[("centre_cell_mask", "PBC 360x363")]["seconds_per_image"]
    print(f"centre_cell_mask vs thesis Algorithm 1 ({THESIS_ALG1_S} s): {THESIS_ALG1_S / alg1:.1f}x faster")
    for size in SIZES:
        ours = by[("maskrcnn_effnet_lite0", size)]["seconds_per_image"]
        ref = by[("maskrcnn_resnet50_fpn", size)]["seconds_per_image"]
        print(f"{size}: EfficientNet-Lite0 Mask R-CNN is {ref / ours:.1f}x faster than ResNet-50-FPN")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def _env() -> dict:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    main()
