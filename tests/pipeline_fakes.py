"""Small stand-ins shared by the pipeline/delivery tests: a random-weights classifier bundle in
the real bundle format, and fakes for rule-level checks (label set from labels.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvat_tools import labels
from cvat_tools.formats.annotations import Mask

TINY_INPUT = 64  # crops of a random classifier: small keeps the tests fast


def make_random_classifier(path: Path) -> Path:
    """A classifier bundle over labels.ALL_CLASSES with random (seeded) weights."""
    import torch

    from cvat_tools.bundle import save_bundle
    from cvat_tools.classify.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", len(labels.ALL_CLASSES), pretrained=False)
    return save_bundle(
        path, "classifier", model.state_dict(), list(labels.ALL_CLASSES),
        {"backbone": "efficientnet_lite0"}, input_size=TINY_INPUT,
        training={"note": "random weights for tests"},
    )


_SHARED: dict[str, Path] = {}


def shared_weights() -> Path:
    """One weights folder (random classifier, classical segmenter) per test process: built once,
    removed at exit."""
    if "dir" not in _SHARED:
        from cvat_tools.bundle import save_classical_segmenter

        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="cvat-tools-test-weights-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        make_random_classifier(root / "classifier")
        save_classical_segmenter(root / "segmenter")  # explicit: no silent fallback
        _SHARED["dir"] = root
    return _SHARED["dir"]


@dataclass
class FakePrediction:
    label: str
    score: float
    probs: dict = field(default_factory=dict)


class FakeModel:
    """Answers a fixed (label, score) per call order; records batch sizes."""

    def __init__(self, answers, input_size=32, labels_=labels.ALL_CLASSES, per_call=False):
        self.answers = list(answers)
        self.per_call = per_call  # True: every call starts again at answers[0]
        self.input_size = input_size
        self.labels = list(labels_)
        self.batches: list[int] = []

    def predict(self, crops):
        self.batches.append(len(crops))
        start = 0 if self.per_call else sum(self.batches[:-1])
        out = []
        for i, crop in enumerate(crops):
            assert crop.shape == (self.input_size, self.input_size, 3) and crop.dtype == np.uint8
            label, score = self.answers[(start + i) % len(self.answers)]
            probs = {name: 0.0 for name in self.labels}
            probs[label] = score
            out.append(FakePrediction(label, score, probs))
        return out


@dataclass
class FakeDetection:
    mask: Mask
    score: float
    label: str = "wbc"


class GridSegmenter:
    """n square 'cells' on a grid, scores descending from 0.99."""

    name = "grid"

    def __init__(self, n: int, side: int = 10):
        self.n, self.side = n, side

    def segment(self, image, threshold=0.5):
        out = []
        per_row = max(1, image.shape[1] // (self.side + 2))
        for i in range(self.n):
            r, c = divmod(i, per_row)
            bitmap = np.ones((self.side, self.side), dtype=bool)
            out.append(FakeDetection(Mask(bitmap, c * (self.side + 2), r * (self.side + 2)),
                                     0.99 - 0.01 * i))
        return [d for d in out if d.score >= threshold]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0



GRADED_SCORES = (0.99, 0.9, 0.8, 0.7, 0.6, 0.5)
# threshold -> how many of GRADED_SCORES pass (score >= threshold); 0.5 is the delivery default
GRADED_COUNTS = {0.0: 6, 0.5: 6, 0.55: 5, 0.65: 4, 0.75: 3, 0.85: 2, 0.95: 1, 1.0: 0}
GRADED_SHAPE = (240, 320)


def graded_field() -> np.ndarray:
    """A pale smear-like RGB field with some structure (a smooth gradient): a uniform frame
    would be answered as blank (frames.is_blank) before any segmenter runs."""
    h, w = GRADED_SHAPE
    ramp = np.linspace(-30, 30, w, dtype=np.float32)[None, :, None]
    base = np.array((215, 200, 210), np.float32)[None, None, :]
    return np.clip(base + ramp + np.zeros((h, 1, 1), np.float32), 0, 255).astype(np.uint8)


class GradedSegmenter:
    """Six disc 'cells' of graded detection scores (GRADED_SCORES) on a GRADED_SHAPE image.

    Real segmenters' scores on the fixtures saturate at 1.0, so any threshold gives the same
    cells; these make a threshold that is ignored (or replaced by the default) visible."""

    name = "graded"

    def __init__(self, scores=GRADED_SCORES, radius: int = 14):
        self.scores, self.radius = tuple(scores), radius
        self.calls: list[float] = []

    def centres(self):
        return [(40 + 80 * (i % 4), 60 + 110 * (i // 4)) for i in range(len(self.scores))]

    def segment(self, image, threshold=0.5):
        import cv2

        self.calls.append(threshold)
        h, w = image.shape[:2]
        out = []
        for (cx, cy), score in zip(self.centres(), self.scores):
            full = np.zeros((h, w), np.uint8)
            cv2.ellipse(full, (cx, cy), (self.radius, self.radius - 3), 20, 0, 360, 1, -1)
            ys, xs = np.nonzero(full)
            y0, x0 = ys.min(), xs.min()
            bitmap = full[y0:ys.max() + 1, x0:xs.max() + 1].astype(bool)
            out.append(FakeDetection(Mask(bitmap, int(x0), int(y0)), score))
        return [d for d in out if d.score >= threshold]


def graded_pipeline():
    """Pipeline(GradedSegmenter, fake classifier, fake refiner): no torch, no data."""
    from cvat_tools.pipeline import Pipeline

    clf = FakeModel([("neutrophil", 0.9), ("lymphocyte", 0.8), ("band cell", 0.95),
                     ("monocyte", 0.5), ("eosinophil", 0.7), ("platelet", 0.65)], per_call=True)
    ref = FakeModel([("neutrophil", 0.8), ("monocyte", 0.9), ("neutrophil", 0.99),
                     ("monocyte", 0.55), ("eosinophil", 0.75), ("lymphocyte", 0.6)],
                    labels_=labels.SHARED_CLASSES, per_call=True)
    return Pipeline(GradedSegmenter(), clf, ref)
