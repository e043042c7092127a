"""Does the mask that cuts a crop change the classifier's answer? PBC crops of the classifier's
val split (never its test split: this is for choosing what to train on next), each cut twice:

  classical   segment.classical.centre_cell_mask: what the shipped classifier was trained on
  maskrcnn    the shipped Mask R-CNN's instance nearest the image centre: what the pipeline
              (predict, the Nuclio function) feeds the classifier on a smear

    python experiments/mask_source.py [--threads 2] [--every 1] [--plot pairs.png] [--bundle NAME=DIR ...]

Prints macro-F1 (fine classes and the 8 PBC folders) for both, and the mean IoU of the two masks,
for the shipped classifier or each --bundle (same split: the val files come from the first).
--plot writes a montage of crop pairs (classical left, Mask R-CNN right).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _data import DATA  # noqa: E402  (the one data resolver, benchmarks/_data.py)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pbc", type=Path, default=DATA / "pbc")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=1, help="score every k-th image (quicker)")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR",
                    help="classifier bundles to score (default: the shipped one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cvat_tools.bundle import shipped_bundle
    from cvat_tools.classify.classifier import CellClassifier
    from cvat_tools.crops import cell_crop
    from cvat_tools.data import cells as D
    from cvat_tools.imaging import load_image
    from cvat_tools.metrics.classification import score_predictions
    from cvat_tools.segment.classical import centre_cell_mask
    from cvat_tools.segment.maskrcnn import MaskRCNNSegmenter
    from cvat_tools.segment.single_cell import centre_detection

    bundles = [b.split("=", 1) for b in args.bundle] or [["shipped", None]]
    classifiers = {name: CellClassifier.from_bundle(path) for name, path in bundles}
    clf = next(iter(classifiers.values()))
    if any(c.manifest["split"]["files"]["val"] != clf.manifest["split"]["files"]["val"] for c in classifiers.values()):
        raise SystemExit("the bundles were trained on different splits; their val crops are not comparable")
    seg = MaskRCNNSegmenter.from_bundle(shipped_bundle("segmenter"))
    samples = D.split_from_manifest(clf.manifest["split"]["files"], args.pbc, "val")[::args.every]
    crops = {"classical": [], "maskrcnn": []}
    truth, ious, skipped, t0 = [], [], 0, time.time()
    for s in samples:
        image = load_image(s.path)
        h, w = image.shape[:2]
        classical = centre_cell_mask(image)
        det = centre_detection(seg.segment(image, D.SEGMENTER_THRESHOLD), h, w)
        if classical is None or det is None:
            skipped += 1
            continue
        learned = det.full_mask(h, w)
        ious.append((classical & learned).sum() / max((classical | learned).sum(), 1))
        crops["classical"].append(cell_crop(image, classical))
        crops["maskrcnn"].append(cell_crop(image, learned))
        truth.append(s.label)
    print(f"{len(truth)} PBC val images ({skipped} without a mask of either kind), "
          f"{time.time() - t0:.0f} s; mean mask IoU classical vs Mask R-CNN {np.mean(ious):.3f}")
    for model_name, model in classifiers.items():
        for name, cut in crops.items():
            predicted = [p.label for p in model.predict(cut)]
            fine = score_predictions(truth, predicted, "fine", model.labels)
            folders = score_predictions(truth, predicted, "pbc-folders", model.labels)
            print(f"{model_name:12s} {name:10s} fine macro-F1 {fine.macro_f1:.4f} (acc {fine.accuracy:.4f})   "
                  f"8 folders {folders.macro_f1:.4f} (acc {folders.accuracy:.4f})")
    if args.plot:
        import cv2

        pairs = [np.hstack([cv2.resize(a, (96, 96)), cv2.resize(b, (96, 96))])
                 for a, b in zip(crops["classical"][:40], crops["maskrcnn"][:40])]
        pairs += [np.full_like(pairs[0], 255)] * (-len(pairs) % 5)
        grid = np.vstack([np.hstack(pairs[i:i + 5]) for i in range(0, len(pairs), 5)])
        cv2.imwrite(str(args.plot), np.ascontiguousarray(grid[..., ::-1]))
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
