"""The shipped pipeline on another device (a GPU) against the CPU: same cells, labels, masks; time.

    python benchmarks/device_parity.py IMAGE... [--device cuda] [--upscale 6] [--repeat 5]

For each image (and the first one upscaled --upscale times, a phone-photo-sized field): the
number of cells, both answers and scores, the mask IoU per cell pair, and the median time of
Pipeline.run on the device (after two warm-up runs; CUDA synchronized). Prints one JSON line
per image. Needs no data beyond the images given (e.g. ../shared/data/bccd_wbc/images/*.jpg).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--upscale", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run this on a GPU machine (or pass --device cpu)", file=sys.stderr)
        return 2

    from cvat_tools.formats.masks import mask_to_full
    from cvat_tools.imaging import load_image
    from cvat_tools.pipeline import Pipeline

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    cpu, other = Pipeline.load(device="cpu"), Pipeline.load(device=args.device)
    first = load_image(args.images[0])
    big = np.ascontiguousarray(np.kron(first, np.ones((args.upscale, args.upscale, 1), np.uint8)))
    inputs = [(str(p), load_image(p)) for p in args.images] + [(f"{args.images[0]} x{args.upscale}", big)]
    worst = 1.0
    for name, image in inputs:
        h, w = image.shape[:2]
        a, b = cpu.run(image), other.run(image)
        pairs = []
        for x, y in zip(a, b):
            mx, my = mask_to_full(x.geometry, w, h), mask_to_full(y.geometry, w, h)
            iou = float((mx & my).sum() / max((mx | my).sum(), 1))
            worst = min(worst, iou)
            pairs.append({"labels": [x.label, y.label], "scores": [round(x.score, 4), round(y.score, 4)],
                          "mask_iou": round(iou, 4)})
        for _ in range(2):
            other.run(image)
        times = []
        for _ in range(args.repeat):
            sync()
            t = time.perf_counter()
            other.run(image)
            sync()
            times.append(time.perf_counter() - t)
        print(json.dumps({"image": name, "size": [w, h], "cells": [len(a), len(b)], "pairs": pairs,
                          f"{args.device}_median_s": round(statistics.median(times), 4)}), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device,
                      "torch": torch.__version__, "worst_mask_iou": round(worst, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
