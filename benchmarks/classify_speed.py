"""Batched classification speed of the shipped classifier (and refiner) on CPU threads.

    python benchmarks/classify_speed.py [--threads 2] [--n 256] [--batch-size 64]

Crops are real: PBC images of the classifier's held-out test split, masked with
centre_cell_mask (about 200-250 px, resized to the model's input inside predict()). The time
counts predict() only: resize, stain normalization, network.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _data import DATA


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pbc", type=Path, default=DATA / "pbc")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cvat_tools.bundle import shipped_bundle
    from cvat_tools.classify.classifier import CellClassifier
    from cvat_tools.classify.dann import Refiner
    from cvat_tools.data import cells as D
    from cvat_tools.imaging import load_image

    clf = CellClassifier.from_bundle()
    test = D.split_from_manifest(clf.manifest["split"]["files"], args.pbc, "test")
    test = test[::max(1, len(test) // args.n)][:args.n]
    mask_fn = D.centre_mask_function()[0]
    crops = [D.centre_crop(load_image(s.path), None, mask_fn)[0] for s in test]
    crops = (crops * (args.n // len(crops) + 1))[:args.n]
    models = [("classifier", clf)]
    if shipped_bundle("refiner"):
        models.append(("refiner", Refiner.from_bundle(classifier_labels=clf.labels)))
    import os
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs slow this down)")
    print(f"{args.n} crops (median side {sorted(c.shape[0] for c in crops)[len(crops) // 2]} px), "
          f"batch {args.batch_size}, {args.threads} threads")
    for name, model in models:
        model.predict(crops[:args.batch_size], batch_size=args.batch_size)  # warm-up
        t0 = time.perf_counter()
        model.predict(crops, batch_size=args.batch_size)
        dt = time.perf_counter() - t0
        print(f"{name:<11} input {model.input_size}px stain {model.stain.method:<9} {args.n / dt:7.1f} crops/s")


if __name__ == "__main__":
    main()
