"""Cross-lab scores on the 4 classes every public set here has (eosinophil, lymphocyte,
monocyte, neutrophil): PBC-trained models on BCCD (single-WBC test images) and JTSC.

    python benchmarks/cross_domain.py [--refiner NAME=BUNDLE ...] [--classifier BUNDLE]
                                      [--exclude FEW_SHOT_DIR] [--adabn] [--bccd-split val]

Rows:
  source-only          the classifier as trained on PBC (band cell counts as neutrophil)
  + stain norm (test)  the same classifier, every crop Reinhard-normalized to the LAB
                       statistics of 400 PBC train crops, cut with the mask the classifier was
                       trained on, at inference only (no retraining)
  + Macenko (test)     the same with Macenko's stain vectors instead
  NAME                 each --refiner NAME=BUNDLE (other recipes: without DANN's partner
                       options, with Reinhard, semi-supervised, ...), in the order given
  shipped refiner      cvat_tools/weights/refiner
  rule                 the thesis rule over the classifier and the shipped refiner: what the
                       pipeline outputs
  ... + AdaBN          (--adabn) source-only and rule again, every BatchNorm's statistics
                       re-estimated on the lab's unlabelled crops (AdaBN, Li et al. 2016): BCCD
                       train+val cells for BCCD, JTSC's own crops for JTSC (the refiner's
                       targets); a test-time adaptation that needs no training
Each row is scored as trained (prior "none") and under the peripheral-blood prior
(labels.PERIPHERAL_BLOOD_PRIOR: the adult reference differential, which the shipped refiner
decides with).
Crops are cut with the datasets' own masks (crops.cell_crop). The last line counts the
source-only classifier's "platelet" answers over all labelled crops. Macro-F1 is over the classes
present in each set's truth; a prediction outside the 4 classes is simply wrong. JTSC was seen
UNLABELLED by the refiners during training (transductive domain adaptation); BCCD test was not.
--bccd-split val scores BCCD val (the cross-lab selection set) instead of BCCD test.
--exclude DIR (a folder written by experiments/few_shot_crops.py, given to a semi-supervised
refiner as --target-labels) leaves out the crops whose labels that refiner was trained with.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from _data import DATA


def adabn(wrapper, bundle_path: Path, crops: list, batch: int = 64):
    """``wrapper`` (CellClassifier or Refiner) over the bundle's network with every BatchNorm's
    running statistics replaced by those of ``crops`` (cumulative average, no weight changes)."""
    from cvat_tools.bundle import load_bundle
    from cvat_tools.classify.classifier import prepare, to_tensor
    from cvat_tools.classify.stain import StainNormalizer

    bundle = load_bundle(bundle_path, kind=wrapper.kind)
    model = wrapper.network(bundle).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: every crop weighs the same
        m.train()
    stain = StainNormalizer.from_manifest(bundle.manifest.get("stain"))
    size = bundle.manifest["input_size"]  # load_bundle checked it is there
    x = to_tensor(prepare(crops, size, stain))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for start in range(0, len(x), batch):
            model(x[order[start:start + batch]])
    return wrapper.from_network(model.eval(), bundle)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classifier", type=Path, default=None)
    ap.add_argument("--refiner", action="append", default=[], metavar="NAME=BUNDLE",
                    help="another refiner bundle to score (repeatable)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--exclude", type=Path, default=None, metavar="FEW_SHOT_DIR",
                    help="leave out the crops of this few-shot folder (experiments/few_shot_crops.py)")
    ap.add_argument("--reference-n", type=int, default=400, help="PBC train crops for the test-time reference")
    ap.add_argument("--adabn", action="store_true",
                    help="add source-only and rule rows with BatchNorm statistics re-estimated per lab")
    ap.add_argument("--bccd-split", choices=("test", "val"), default="test",
                    help="BCCD split to score (val: the cross-lab selection set)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cvat_tools import labels as L
    from cvat_tools.bundle import shipped_bundle
    from cvat_tools.classify.classifier import CellClassifier
    from cvat_tools.classify.dann import Refiner
    from cvat_tools.classify.rule import combine
    from cvat_tools.classify.stain import StainNormalizer
    from cvat_tools.data.eval_sets import load_eval_set
    from cvat_tools.metrics.classification import score_predictions

    clf = CellClassifier.from_bundle(args.classifier)
    bccd = f"BCCD {args.bccd_split}"
    sets = {bccd: load_eval_set(args.data / "bccd_wbc", args.bccd_split),
            "JTSC": load_eval_set(args.data / "jtsc_wbc")}
    if args.exclude is not None:
        from few_shot_crops import crop_key

        seen = {p.stem for p in args.exclude.glob("*/*.png")}
        if not seen:
            ap.error(f"--exclude {args.exclude}: no crops there")
        for name, lab in ((bccd, "bccd"), ("JTSC", "jtsc")):
            s = sets[name]
            keep = [i for i, n in enumerate(s.names) if crop_key(lab, n) not in seen]
            print(f"{name}: {len(s.names) - len(keep)} few-shot crops left out")
            sets[name] = dataclasses.replace(s, crops=[s.crops[i] for i in keep],
                                             truth=[s.truth[i] for i in keep], names=[s.names[i] for i in keep])

    # test-time stain normalization: reference from PBC crops of the classifier's TRAIN split
    from cvat_tools.classify.classifier import prepare
    from cvat_tools.data import cells as D
    from cvat_tools.imaging import load_image

    train = D.split_from_manifest(clf.manifest["split"]["files"], args.data / "pbc", "train")
    train = train[::max(1, len(train) // args.reference_n)]
    # cut as the classifier's training crops were (its manifest's crop_mask)
    mask_fn, _ = D.mask_function(D.bundle_mask_source(clf.manifest))
    crops = [D.centre_crop(load_image(s.path), None, mask_fn)[0] for s in train]
    reference = prepare(crops, clf.input_size, StainNormalizer("none"))
    clf_stain = CellClassifier(clf.model, clf.labels, clf.input_size,
                               StainNormalizer.fit("reinhard", reference), manifest=clf.manifest)
    clf_macenko = CellClassifier(clf.model, clf.labels, clf.input_size,
                                 StainNormalizer.fit("macenko", reference), manifest=clf.manifest)

    rows = [("source-only", clf, None), ("+ stain norm (test)", clf_stain, None),
            ("+ Macenko (test)", clf_macenko, None)]
    for entry in args.refiner:
        name, _, path = entry.partition("=")
        if not path:
            ap.error(f"--refiner {entry!r}: expected NAME=BUNDLE")
        rows.append((name, Refiner.from_bundle(Path(path), classifier_labels=clf.labels), None))
    shipped = shipped_bundle("refiner")
    ref = Refiner.from_bundle(shipped, classifier_labels=clf.labels) if shipped else None
    rows.append(("shipped refiner", ref, None if ref else "not shipped"))
    rows.append(("rule (clf + shipped)", ref, None if ref else "not shipped"))
    if args.adabn:
        # each lab's unlabelled crops, the refiners' own targets (data.cells.target_crops)
        unlabelled = {bccd: D.target_crops(args.data / "bccd_wbc", clf.input_size),
                      "JTSC": D.target_crops(args.data / "jtsc_wbc", clf.input_size)}
        clf_path = args.classifier or shipped_bundle("classifier")
        rows.append(("source-only + AdaBN", {n: adabn(CellClassifier, clf_path, unlabelled[n])
                                             for n in sets}, None))
        if ref:
            rows.append(("rule (clf + shipped) + AdaBN", {n: adabn(Refiner, shipped, unlabelled[n])
                                                          for n in sets}, None))

    # Each model twice: as trained (uniform prior: the training sampling was class-balanced) and
    # under the peripheral-blood prior (labels.PERIPHERAL_BLOOD_PRIOR). For the rule row the
    # classifier stays as shipped (no prior) and only the refiner's prior changes, as in the
    # pipeline.
    priors = ("none", "peripheral-blood")
    header = f"{'model':<32}" + "".join(f"{name + ' F1':>14}{'acc':>7}" for _ in priors for name in sets)
    print(f"{'':<32}" + "".join(f"{'prior: ' + p:>{21 * len(sets)}}" for p in priors))
    print(header)
    print("-" * len(header))
    clf.set_prior("none")
    clf_preds = {name: clf.predict(s.crops) for name, s in sets.items()}
    for title, model, missing in rows:
        if model is None:
            print(f"{title:<32}{missing}")
            continue
        cells = ""
        for prior in priors:
            for name, s in sets.items():
                lab_model = model[name] if isinstance(model, dict) else model  # AdaBN: one per lab
                lab_model.set_prior(prior)
                preds = lab_model.predict(s.crops)
                labels = [p.label for p in preds]
                if title.startswith("rule"):
                    labels = [combine(c, r).label for c, r in zip(clf_preds[name], preds)]
                rep = score_predictions(s.truth, labels, "cross-domain")
                cells += f"{rep.macro_f1:14.3f}{rep.accuracy:7.3f}"
        print(f"{title:<32}{cells}", flush=True)
    print("n (crops of the 4 classes): " + ", ".join(
        f"{name} {sum(t in L.CROSS_DOMAIN_CLASSES for t in s.truth)}" for name, s in sets.items()))
    # Upscaled, blurry crops of other labs look like PBC's small platelets to the classifier.
    print("source-only answers 'platelet' for: " + ", ".join(
        f"{name} {sum(p.label == 'platelet' for p in clf_preds[name])} of {len(s.crops)} crops"
        for name, s in sets.items()))


if __name__ == "__main__":
    main()
