"""Serving speed on CPU: the Nuclio handler's latency and `cvat-tools predict` throughput.

    python benchmarks/serving_latency.py [--threads 2] [--weights DIR] [--repeat 5] [--n 20]

1. Handler latency: serverless/.../nuclio/main.py called through nuclio_sdk's test platform
   (decode base64 + JPEG, Pipeline.run, response JSON), on a real 640x480 BCCD field
   (BloodImage_00002.jpg) and on the same field upscaled to 4032x3024 (bicubic, JPEG q=90;
   the size of a phone-on-microscope photograph). The first call is reported apart (warm-up).
2. Stages: decode, segmenter alone and the whole Pipeline.run on the same two images.
3. predict throughput: `cvat-tools predict` (in-process, CVAT XML out) over the first --n
   images of the BCCD test split, images/s excluding model loading.

Wall times (median, min) are what a caller waits; on a shared machine also read cpu_median_s
(process CPU seconds per call, all threads), which other processes barely move.

Models: the shipped bundles, or --weights DIR (segmenter/ classifier/ refiner/). The numbers
depend on the CPU and on what else runs on it: rerun on the machine you care about.
"""
from __future__ import annotations

import argparse
import base64
import csv
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "serverless" / "pytorch" / "cvat_tools" / "wbc" / "nuclio" / "main.py"
DATA = Path(os.environ.get("CVAT_TOOLS_DATA", REPO.parent / "shared" / "data"))


def jpeg_bytes(path: Path, size: tuple[int, int] | None = None) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None:
            im = im.resize(size, Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        return buf.getvalue()


def handler_latency(weights: Path | None, repeat: int) -> dict:
    import nuclio_sdk
    import nuclio_sdk.test

    if weights is not None:
        os.environ["CVAT_TOOLS_WEIGHTS"] = str(weights)
    os.environ["CVAT_TOOLS_DEVICE"] = "cpu"
    spec = importlib.util.spec_from_file_location("cvat_tools_wbc_main", MAIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    platform = nuclio_sdk.test.Platform()
    platform._logger.set_handler("default", io.StringIO(),  # keep the benchmark output clean
                                 nuclio_sdk.logger.HumanReadableFormatter())

    field = DATA / "bccd_wbc" / "images" / "BloodImage_00002.jpg"
    t0 = time.perf_counter()
    platform.call_handler(module.handler, nuclio_sdk.Event(body={"image": ""}))  # init_context
    init_s = time.perf_counter() - t0
    results = {"init_context_s": round(init_s, 2)}
    for name, size in (("640x480", None), ("4032x3024", (4032, 3024))):
        data = jpeg_bytes(field, size)
        body = {"image": base64.b64encode(data).decode("ascii"), "threshold": 0.5}
        times, cpu, cells = [], [], None
        for _ in range(repeat + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            response = platform.call_handler(module.handler, nuclio_sdk.Event(body=body))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert response.status_code == 200, response.body
            cells = len(json.loads(response.body))
        results[name] = {
            "jpeg_MB": round(len(data) / 1e6, 2),
            "first_call_s": round(times[0], 3),
            "median_s": round(statistics.median(times[1:]), 3),
            "min_s": round(min(times[1:]), 3),
            # CPU seconds of this process per call (all threads): barely moved by other
            # processes on the same cores, unlike wall time
            "cpu_median_s": round(statistics.median(cpu[1:]), 3),
            "runs": repeat,
            "cells": cells,
        }
    return results


def stage_times(weights: Path | None, repeat: int) -> dict:
    """Where the time goes on one field: segmenter vs classifier+refiner (min of repeats)."""
    from cvat_tools.imaging import decode_image
    from cvat_tools.pipeline import Pipeline

    pipeline = Pipeline.load(weights=weights)
    field = DATA / "bccd_wbc" / "images" / "BloodImage_00002.jpg"
    out = {}
    for name, size in (("640x480", None), ("4032x3024", (4032, 3024))):
        data = jpeg_bytes(field, size)
        t0 = time.perf_counter()
        image = decode_image(data)
        decode_s = time.perf_counter() - t0
        seg, full = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            pipeline.segmenter.segment(image, threshold=0.5)
            seg.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pipeline.run(image, threshold=0.5)
            full.append(time.perf_counter() - t0)
        out[name] = {"decode_s": round(decode_s, 3), "segment_min_s": round(min(seg), 3),
                     "run_min_s": round(min(full), 3),
                     "classify_refine_min_s": round(max(min(full) - min(seg), 0.0), 3)}
    return out


def predict_throughput(weights: Path | None, n: int) -> dict:
    from cvat_tools.commands import predict as predict_cmd
    from cvat_tools.pipeline import Pipeline

    root = DATA / "bccd_wbc"
    with open(root / "index.csv") as fh:
        names = [row["image"] for row in csv.DictReader(fh) if row["split"] == "test"][:n]
    images = [str(root / name) for name in names]
    # model loading, timed apart (predict loads the same way)
    t0 = time.perf_counter()
    Pipeline.load(weights=weights)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        args = [*images, "--out", str(Path(tmp) / "out")]
        if weights is not None:
            args += ["--weights", str(weights)]
        t0 = time.perf_counter()
        try:
            predict_cmd.predict.main(args=args, standalone_mode=False)
        except SystemExit:
            pass
        total_s = time.perf_counter() - t0
        summary = json.loads((Path(tmp) / "out" / "predict.json").read_text())
    run_s = max(total_s - load_s, 1e-9)
    return {
        "images": len(summary["images"]),
        "cells": sum(im["cells"] for im in summary["images"]),
        "model_load_s": round(load_s, 2),
        "total_s": round(total_s, 2),
        "images_per_s": round(len(summary["images"]) / run_s, 2),
        "models": summary["models"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--weights", type=Path, help="folder with bundles (default: shipped)")
    ap.add_argument("--repeat", type=int, default=5, help="timed handler calls per size")
    ap.add_argument("--n", type=int, default=20, help="BCCD test images for predict")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    report = {
        "threads": args.threads,
        "cpu": os.cpu_count(),
        "handler": handler_latency(args.weights, args.repeat),
        "stages": stage_times(args.weights, args.repeat),
        "predict": predict_throughput(args.weights, args.n),
        # other processes on the same cores inflate the times: compare min_s on a busy machine
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
