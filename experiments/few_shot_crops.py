"""A few labelled crops per class from each other lab: what annotators' corrections give the
semi-supervised refiner (`cvat-tools train refiner --target-labels DIR`).

    python experiments/few_shot_crops.py --per-class 5 --seed 0 --out /tmp/few

Writes DIR/<class>/<lab>_<image>.png (masked crops, crops.cell_crop, native size) for the 4
classes both sides share: BCCD single-WBC *train* images (BCCD val/test stay unlabelled) and
JTSC images (JTSC has no split). `benchmarks/cross_domain.py --exclude DIR` then scores JTSC
without the crops drawn here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _data import DATA  # noqa: E402  (the one data resolver, benchmarks/_data.py)


def crop_key(lab: str, name: str) -> str:
    """File stem of a crop: lab plus image stem (one labelled WBC per image in both sets)."""
    return f"{lab}_{Path(name.split('#')[0]).stem}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--labs", default="bccd,jtsc", help="comma-separated: bccd, jtsc")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from cvat_tools import labels as L
    from cvat_tools.atomic import atomic_dir
    from cvat_tools.data import cells as D

    rng = np.random.default_rng(args.seed)
    with atomic_dir(args.out, command="experiments/few_shot_crops.py") as tmp:  # never replaces a foreign folder
        for lab in args.labs.split(","):
            if lab == "bccd":
                crops = D.bccd_crops(args.data / "bccd_wbc", ("train",), labelled_only=True)
            elif lab == "jtsc":
                crops = D.jtsc_crops(args.data / "jtsc_wbc")
            else:
                ap.error(f"unknown lab {lab!r}")
            for cls in L.CROSS_DOMAIN_CLASSES:
                pool = [c for c in crops if c.label == cls]
                pick = rng.choice(len(pool), size=min(args.per_class, len(pool)), replace=False)
                (tmp / cls).mkdir(exist_ok=True)
                for i in sorted(pick):
                    c = pool[i]
                    cv2.imwrite(str(tmp / cls / f"{crop_key(lab, c.name)}.png"), c.crop[:, :, ::-1])
                print(f"{lab} {cls}: {len(pick)} of {len(pool)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
