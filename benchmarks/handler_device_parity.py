"""The GPU Nuclio function end to end: serverless/.../nuclio/main.py under
nuclio_sdk.test.Platform with CVAT_TOOLS_DEVICE=cuda against the same function on the CPU.

    python benchmarks/handler_device_parity.py IMAGE... [--device cuda] [--size 4032x3024]
                                               [--repeat 5] [--json-out FILE]

Each image (and the first one resized to --size and re-encoded as JPEG, a phone photo's size)
goes to both handlers as CVAT sends it (base64 JSON, threshold 0.5). Per request: HTTP status,
cells, labels, confidences, each mask pair's box and IoU, attributes equal, and the median time
of a handler call on the device (after two warm-ups, decoding and JSON included). One JSON line
per request. This is what function-gpu.yaml runs, minus the container.
"""
from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "serverless" / "pytorch" / "cvat_tools" / "wbc" / "nuclio" / "main.py"


def _event(body):
    import nuclio_sdk

    return nuclio_sdk.Event(body=body, content_type="application/json", method="POST")


def load_function(device: str):
    """(platform, handler) of main.py with its init_context run on ``device``."""
    import nuclio_sdk.test

    from cvat_tools import serverless

    os.environ[serverless.ENV_DEVICE] = device
    spec = importlib.util.spec_from_file_location(f"wbc_main_{device.replace(':', '_')}", MAIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the platform finds init_context through the module
    spec.loader.exec_module(module)
    platform = nuclio_sdk.test.Platform()
    platform.call_handler(module.handler, _event({"image": ""}))  # runs init_context once
    return platform, module.handler


def call(function, body):
    response = function[0].call_handler(function[1], _event(body))
    return response.status_code, json.loads(response.body)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="4032x3024", help="WxH of the resized copy of the first image")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    import cv2
    import numpy as np
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run this on a GPU machine (or pass --device cpu)", file=sys.stderr)
        return 2
    from cvat_tools.formats.masks import mask_to_full, serverless_mask_decode

    cpu, dev = load_function("cpu"), load_function(args.device)
    w, h = (int(v) for v in args.size.lower().split("x"))
    first = cv2.imread(str(args.images[0]))
    big = cv2.imencode(".jpg", cv2.resize(first, (w, h), interpolation=cv2.INTER_CUBIC),
                       [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    requests = [(str(p), p.read_bytes()) for p in args.images] + [(f"{args.images[0].name} at {w}x{h}", big)]
    out = {"torch": torch.__version__, "device": args.device,
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none", "requests": []}
    for name, data in requests:
        body = {"image": base64.b64encode(data).decode("ascii"), "threshold": 0.5}
        (status_cpu, a), (status_dev, b) = call(cpu, body), call(dev, body)
        h, w = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE).shape
        row = {"image": name, "status": [status_cpu, status_dev], "cells": [len(a), len(b)], "pairs": []}
        for x, y in zip(a, b):
            fx = mask_to_full(serverless_mask_decode(x["mask"]), w, h)
            fy = mask_to_full(serverless_mask_decode(y["mask"]), w, h)
            row["pairs"].append({
                "labels": [x["label"], y["label"]], "confidence": [x["confidence"], y["confidence"]],
                "mask_box": [x["mask"][-4:], y["mask"][-4:]],
                "mask_iou": round(float((fx & fy).sum() / max((fx | fy).sum(), 1)), 5),
                "attributes_equal": x["attributes"] == y["attributes"]})
        for _ in range(2):
            call(dev, body)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            call(dev, body)
            times.append(time.perf_counter() - start)
        row["device_handler_median_s"] = round(statistics.median(times), 4)
        out["requests"].append(row)
        print(json.dumps(row), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
