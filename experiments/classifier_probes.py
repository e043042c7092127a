"""Questions about the classifier's remaining PBC errors, answered on its VAL split only
(never the test split: these decide what to try next, not what to report).

    python experiments/classifier_probes.py ensemble [BUNDLE ...]   # average of the bundles' probabilities
    python experiments/classifier_probes.py size [BUNDLE]           # does the cell's size help?
    python experiments/classifier_probes.py masks [BUNDLE]          # errors by mask regularity
    python experiments/classifier_probes.py tta [BUNDLE]            # test-time flips and rotations
    python experiments/classifier_probes.py input-size [BUNDLE]     # the crops fed at other sizes

Val images are cut with the mask the (first) bundle was trained on (its manifest's
training.data.crop_mask: classical, or the shipped segmenter's centre instance, ~0.25 s an
image); default bundle: the shipped one.

ensemble  macro-F1 (fine, 8 folders) of each bundle and of the mean of their probabilities
          (default: the shipped bundle alone; give others with the same labels and split).
size      the crops are scaled to the cell's box, so the network never sees how big a cell
          is, and promyelocytes > myelocytes > metamyelocytes in size. 5-fold cross-validated
          logistic regression on the val logits, with and without log mask area and log box
          side (PBC images share one magnification), 3 fold seeds.
masks     error rate of the bundle by the solidity (area / convex hull area) of its mask:
          a mask that takes in a red cell or misses pale cytoplasm is irregular.
tta       a cell has no up or left: macro-F1 of each of the 8 flips/rotations of the crop
          alone, and of the mean probabilities over 2, 4 and all 8 (each costs that many
          forward passes).
input-size  the same crops resized to 128-224 px instead of the bundle's input size, no
          retraining: would a larger input see more (a median PBC cell crop is ~170 px
          across), or did the network learn its objects' apparent size?
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _data import DATA  # noqa: E402  (the one data resolver, benchmarks/_data.py)


def val_crops(manifest: dict, pbc: Path):
    """(crops, truth, mask areas, box sides, solidities) of the val split, cut like the bundle's
    training crops."""
    import cv2

    from cvat_tools.crops import cell_crop
    from cvat_tools.data import cells as D
    from cvat_tools.imaging import load_image

    mask_fn, name = D.mask_function(D.bundle_mask_source(manifest))
    print(f"cutting PBC val images with {name}")
    crops, truth, area, side, solidity = [], [], [], [], []
    for s in D.split_from_manifest(manifest["split"]["files"], pbc, "val"):
        image = load_image(s.path)
        mask = mask_fn(image)
        if mask is None:
            continue
        ys, xs = np.nonzero(mask)
        crops.append(cell_crop(image, mask))
        truth.append(s.label)
        area.append(mask.sum())
        side.append(max(np.ptp(ys), np.ptp(xs)) + 1)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea)
        solidity.append(cv2.contourArea(outline) / max(cv2.contourArea(cv2.convexHull(outline)), 1.0))
    return crops, truth, np.array(area, float), np.array(side, float), np.array(solidity)


def cross_validated_f1(features: np.ndarray, y: np.ndarray, labels: list[str], seed: int, folds: int = 5) -> float:
    from cvat_tools.metrics.classification import classification_report

    x, target = torch.tensor(features, dtype=torch.float32), torch.tensor(y)
    order = np.random.default_rng(seed).permutation(len(y))
    predicted = np.zeros(len(y), int)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        xn = (x - mu) / sd
        w = torch.zeros(x.shape[1], len(labels), requires_grad=True)
        b = torch.zeros(len(labels), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xn[train] @ w + b, target[train]) + 1e-3 * (w ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            predicted[test] = (xn[test] @ w + b).argmax(1).numpy()
    return classification_report([labels[i] for i in y], [labels[i] for i in predicted], labels).macro_f1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("probe", choices=["ensemble", "size", "masks", "tta", "input-size"])
    ap.add_argument("bundles", nargs="*", type=Path)
    ap.add_argument("--pbc", type=Path, default=DATA / "pbc")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cvat_tools.classify.classifier import CellClassifier, prepare, to_tensor
    from cvat_tools.metrics.classification import score_predictions

    models = [CellClassifier.from_bundle(b) for b in (args.bundles or [None])]
    labels = models[0].labels
    if any(m.labels != labels for m in models):
        ap.error("the bundles' label sets differ")
    crops, truth, area, side, solidity = val_crops(models[0].manifest, args.pbc)
    print(f"{len(crops)} PBC val crops")

    def scores(probs: np.ndarray) -> str:
        predicted = [labels[i] for i in probs.argmax(1)]
        fine = score_predictions(truth, predicted, "fine", labels).macro_f1
        folders = score_predictions(truth, predicted, "pbc-folders", labels).macro_f1
        return f"fine macro-F1 {fine:.4f}   8 folders {folders:.4f}"

    if args.probe == "ensemble":
        probs = []
        for path, m in zip(args.bundles or ["shipped"], models):
            p = np.array([[pred.probs[lab] for lab in labels] for pred in m.predict(crops)])
            probs.append(p)
            print(f"{str(path):40s} {scores(p)}")
        if len(probs) > 1:
            print(f"{'mean of the ' + str(len(probs)):40s} {scores(np.mean(probs, 0))}")
        return

    m = models[0]
    if args.probe == "masks":
        wrong = np.array([p.label != t for p, t in zip(m.predict(crops), truth)])
        for lo, hi in ((0, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 1.01)):
            k = (solidity >= lo) & (solidity < hi)
            print(f"solidity {lo:.2f}-{min(hi, 1):.2f}: {k.sum():4d} crops, {wrong[k].mean() if k.any() else 0:.1%} wrong")
        return
    if args.probe == "input-size":
        native = np.array([c.shape[0] for c in crops])
        print(f"native crop side (px): median {np.median(native):.0f}, 10-90% "
              f"{np.percentile(native, 10):.0f}-{np.percentile(native, 90):.0f}")
        trained = m.input_size
        for size in (128, 144, 160, 176, 192, 224):
            m.input_size = size
            probs = np.array([[pred.probs[lab] for lab in labels] for pred in m.predict(crops)])
            print(f"{size} px{' (trained)' if size == trained else '':34s} {scores(probs)}")
        return
    prepared = prepare(crops, m.input_size, m.stain)

    def logits_of(images: np.ndarray) -> np.ndarray:
        x = to_tensor(images).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return torch.cat([m.logits(x[i:i + 64]) for i in range(0, len(x), 64)]).numpy()

    if args.probe == "tta":
        views = {  # the dihedral group of the square, on N x H x W x 3 crops
            "identity": lambda a: a, "flip left-right": lambda a: a[:, :, ::-1], "flip up-down": lambda a: a[:, ::-1],
            "rotate 90": lambda a: np.rot90(a, 1, (1, 2)), "rotate 180": lambda a: np.rot90(a, 2, (1, 2)),
            "rotate 270": lambda a: np.rot90(a, 3, (1, 2)), "transpose": lambda a: a.transpose(0, 2, 1, 3),
            "anti-transpose": lambda a: np.rot90(a.transpose(0, 2, 1, 3), 2, (1, 2)),
        }
        probs = {}
        for name, view in views.items():
            z = logits_of(np.ascontiguousarray(view(prepared)))
            p = np.exp(z - z.max(1, keepdims=True))
            probs[name] = p / p.sum(1, keepdims=True)
            print(f"{name:40s} {scores(probs[name])}")
        for group in (["identity", "flip left-right"], ["identity", "flip left-right", "flip up-down", "rotate 180"],
                      list(views)):
            print(f"{'mean of ' + ', '.join(group) if len(group) < 8 else 'mean of all 8':40s} "
                  f"{scores(np.mean([probs[g] for g in group], 0))}")
        return
    logits = logits_of(prepared)
    y = np.array([labels.index(t) for t in truth])
    la, ls = np.log(area) - np.log(area).mean(), np.log(side) - np.log(side).mean()
    with_size = np.concatenate([logits, np.stack([la, ls, la ** 2], 1)], 1)
    print(f"the network's argmax: {scores(logits)}")
    for seed in range(3):
        print(f"fold seed {seed}: logits only {cross_validated_f1(logits, y, labels, seed):.4f}   "
              f"+ size {cross_validated_f1(with_size, y, labels, seed):.4f}")


if __name__ == "__main__":
    main()
