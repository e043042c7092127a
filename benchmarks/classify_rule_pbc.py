"""`cvat-tools classify` with and without the thesis rule on PBC's held-out test split (the
shipped classifier's manifest split, never trained on): fine macro-F1, accuracy, per-class F1
and how many cells are flagged for review.

    python benchmarks/classify_rule_pbc.py [STEP]     # every STEP-th test image (default 10)

Measured (issue 21, STEP 10 = 140 images, 2 shared CPU cores): classifier alone 0.847
macro-F1 (accuracy 0.857, 9 flagged), --rule 0.427 (accuracy 0.507, 80 flagged): the refiner
does not know erythroblasts and platelets (F1 0 under the rule) and the peripheral-blood prior
turns PBC's immature granulocytes into neutrophils (MODEL_CARD.md: 0.431 on the whole split).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from cvat_tools.bundle import read_manifest, shipped_bundle
from cvat_tools.data.cells import split_from_manifest

PBC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc"


def f1_per_class(pairs: list[tuple[str, str]]) -> dict[str, float]:
    out = {}
    for label in sorted({t for t, _ in pairs}):
        tp = sum(t == label == p for t, p in pairs)
        wrong = sum((t == label) != (p == label) for t, p in pairs)
        out[label] = 2 * tp / (2 * tp + wrong) if tp else 0.0
    return out


def main(step: int = 10) -> None:
    files = read_manifest(shipped_bundle("classifier"))["split"]["files"]
    sample = split_from_manifest(files, PBC, "test")[::step]
    truth = {str(s.path): s.label for s in sample}
    print(f"{len(sample)} test images: {dict(Counter(truth.values()))}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("classifier alone", []), ("--rule", ["--rule"])):
            out = Path(tmp) / "p.csv"
            subprocess.run([sys.executable, "-m", "cvat_tools.cli", "classify", *truth,
                            "--out", str(out), *extra], check=True)
            rows = list(csv.DictReader(out.open()))
            pairs = [(truth[r["file"]], r["label"]) for r in rows]
            f1 = f1_per_class(pairs)
            print(json.dumps({"run": name, "images": len(pairs),
                              "macro_f1": round(sum(f1.values()) / len(f1), 3),
                              "accuracy": round(sum(t == p for t, p in pairs) / len(pairs), 3),
                              "flagged": sum(r["needs_review"] == "true" for r in rows),
                              "per_class_f1": {k: round(v, 3) for k, v in f1.items()}}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
