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

    def __init__(self, answers, input_size=32, labels_=labels.ALL_CLASSES):
        self.answers = list(answers)
        self.input_size = input_size
        self.labels = list(labels_)
        self.batches: list[int] = []

    def predict(self, crops):
        self.batches.append(len(crops))
        start = sum(self.batches[:-1])
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

