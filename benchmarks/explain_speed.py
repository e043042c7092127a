"""What ``explain`` (and ``predict --explain``) adds per cell over ``predict`` on CPU threads.

    python benchmarks/explain_speed.py [--threads 2] [--images 24] [--out results.json]

Images: the first N of the shipped classifier's PBC test split (real 360 x 363 fields, 1-3
cells each). Each image is segmented ONCE, outside the clock; both paths then get the same
detections:

    predict   crops -> classifier.predict -> refiner.predict -> rule
    explain   crops -> Grad-CAM classifier -> Grad-CAM refiner (forward + backward) -> rule
              -> one panel per cell + the contact sheet, PNG-encoded (in memory)

added per cell = (explain - predict) / cells. Also printed: the Grad-CAM part alone, and the
panels + PNG part. The load average is printed first: on a shared machine the numbers are
inflated.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class Replay:
    """A segmenter that answers the detections recorded for each image (by identity)."""

    def __init__(self, recorded: dict[int, list]):
        self.recorded = recorded

    def segment(self, image, threshold=0.5):
        return self.recorded[id(image)]


def _png(image) -> int:
    from cvat_tools.explain.panels import png_bytes

    return len(png_bytes(image))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"])
    ap.add_argument("--pbc", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    ap.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cvat_tools.explain.cells import cell_panel, explain_image, explainers
    from cvat_tools.explain.panels import contact_sheet
    from cvat_tools.imaging import load_image
    from cvat_tools.pipeline import Pipeline
    from cvat_tools.data import cells as D

    load_before = os.getloadavg()[0]
    shipped = Pipeline.load()
    files = shipped.classifier.manifest["split"]["files"]
    samples = D.split_from_manifest(files, args.pbc, "test")[:args.images]
    images = [load_image(s.path) for s in samples]
    recorded = {id(im): shipped.segmenter.segment(im, 0.5) for im in images}  # outside the clock
    pipeline = Pipeline(Replay(recorded), shipped.classifier, shipped.refiner)
    models = explainers(pipeline, args.method)
    explain_image(pipeline, models, images[0])  # warm-up of both paths
    pipeline.run(images[0])

    t0, c0 = time.perf_counter(), time.process_time()
    n_cells = sum(len(pipeline.run(im)) for im in images)
    predict_s, predict_cpu = time.perf_counter() - t0, time.process_time() - c0

    cam_s = draw_s = cam_cpu = draw_cpu = 0.0
    for im in images:
        t1, c1 = time.perf_counter(), time.process_time()
        cells = explain_image(pipeline, models, im)
        t2, c2 = time.perf_counter(), time.process_time()
        panels = [cell_panel(c) for c in cells]
        for p in panels:
            _png(p)
        if panels:
            _png(contact_sheet(panels, "sheet"))
        cam_s, cam_cpu = cam_s + t2 - t1, cam_cpu + c2 - c1
        draw_s, draw_cpu = draw_s + time.perf_counter() - t2, draw_cpu + time.process_time() - c2
    explain_s = cam_s + draw_s
    result = {
        "threads": args.threads, "method": args.method, "images": len(images), "cells": n_cells,
        "load_average_before": round(load_before, 1), "load_average_after": round(os.getloadavg()[0], 1),
        "cpu_count": os.cpu_count(),
        "ms_per_cell": {
            "predict": round(1000 * predict_s / n_cells, 1),
            "explain": round(1000 * explain_s / n_cells, 1),
            "explain_gradcam_and_rule": round(1000 * cam_s / n_cells, 1),
            "explain_panels_and_png": round(1000 * draw_s / n_cells, 1),
            "added": round(1000 * (explain_s - predict_s) / n_cells, 1),
        },
        # CPU seconds of this process (all threads): less sensitive to other jobs than wall time
        "cpu_ms_per_cell": {
            "predict": round(1000 * predict_cpu / n_cells, 1),
            "explain_gradcam_and_rule": round(1000 * cam_cpu / n_cells, 1),
            "explain_panels_and_png": round(1000 * draw_cpu / n_cells, 1),
            "added": round(1000 * (cam_cpu + draw_cpu - predict_cpu) / n_cells, 1),
        },
    }
    print(f"load average {load_before:.1f} on {os.cpu_count()} cores before the run "
          "(other jobs inflate every number)")
    print(f"{n_cells} cells in {len(images)} PBC test images, {args.threads} threads, {args.method}")
    for key, value in result["ms_per_cell"].items():
        print(f"  {key:<26} {value:7.1f} ms/cell wall")
    for key, value in result["cpu_ms_per_cell"].items():
        print(f"  {key:<26} {value:7.1f} ms/cell CPU (all threads)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
