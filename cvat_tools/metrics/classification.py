"""Classification scores: per-class precision/recall/F1, macro-F1, accuracy, confusion matrix.

Scorings: "fine" (the model's labels), "pbc-folders" (fine labels folded to PBC's 8 folders),
"cross-domain" (the 4 classes every lab here has; band cell counts as neutrophil, any other
prediction is "other" and simply wrong).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import labels as L
from ..errors import InputError


@dataclass
class ClassificationReport:
    labels: list[str]
    confusion: np.ndarray  # rows = true, columns = predicted
    precision: dict[str, float] = field(default_factory=dict)
    recall: dict[str, float] = field(default_factory=dict)
    f1: dict[str, float] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.n, 1))

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes that occur in the truth (absent classes do not count)."""
        present = [lab for lab in self.labels if self.support[lab] > 0]
        return float(np.mean([self.f1[lab] for lab in present])) if present else 0.0

    def to_dict(self) -> dict:
        return {
            "n": self.n, "accuracy": round(self.accuracy, 4), "macro_f1": round(self.macro_f1, 4),
            "per_class": {lab: {"precision": round(self.precision[lab], 4), "recall": round(self.recall[lab], 4),
                                "f1": round(self.f1[lab], 4), "support": self.support[lab]} for lab in self.labels},
            "labels": self.labels, "confusion": self.confusion.tolist(),
        }

    def table(self) -> str:
        lines = [f"{'class':<16}{'prec':>7}{'recall':>8}{'f1':>7}{'n':>6}"]
        for lab in self.labels:
            lines.append(f"{lab:<16}{self.precision[lab]:7.3f}{self.recall[lab]:8.3f}{self.f1[lab]:7.3f}"
                         f"{self.support[lab]:6d}")
        lines.append(f"accuracy {self.accuracy:.4f}   macro-F1 {self.macro_f1:.4f}   n {self.n}")
        return "\n".join(lines)


def classification_report(truth: list[str], predicted: list[str], labels: list[str] | None = None) -> ClassificationReport:
    """Scores over ``labels`` (default: every label seen in truth or predictions, sorted)."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    labels = list(labels) if labels is not None else sorted(set(truth) | set(predicted))
    index = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, predicted):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
        elif t in index:
            raise ValueError(f"prediction {p!r} is not among the scored labels {labels}")
    rep = ClassificationReport(labels, cm)
    for lab, i in index.items():
        tp = cm[i, i]
        pred_n, true_n = cm[:, i].sum(), cm[i, :].sum()
        p = tp / pred_n if pred_n else 0.0
        r = tp / true_n if true_n else 0.0
        rep.precision[lab], rep.recall[lab] = float(p), float(r)
        rep.f1[lab] = float(2 * p * r / (p + r)) if p + r else 0.0
        rep.support[lab] = int(true_n)
    return rep


def plot_confusion(report: ClassificationReport, path: str | Path, title: str = "") -> Path:
    """Row-normalized confusion matrix with counts, written atomically as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    cm = report.confusion
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(report.labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), report.labels, rotation=45, ha="right")
    ax.set_yticks(range(n), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or f"accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


# -- scorings: how labels from different label sets are compared ---------------------------------

SCORINGS = ("fine", "pbc-folders", "cross-domain")
OTHER = "other"


def fold(label: str, scoring: str) -> str:
    if scoring == "pbc-folders":
        return L.FINE_TO_PBC_FOLDER.get(label, label)
    if scoring == "cross-domain":
        label = "neutrophil" if label == "band cell" else label
        return label if label in L.CROSS_DOMAIN_CLASSES else OTHER
    return label


def default_scoring(kind: str) -> str:
    return "cross-domain" if kind in ("bccd", "jtsc") else "fine"


def score_predictions(truth: list[str], predicted: list[str], scoring: str,
                      model_labels: list[str] | None = None) -> ClassificationReport:
    """Report over the scoring's label set; for cross-domain, only truths among the 4 classes."""
    if scoring not in SCORINGS:
        raise InputError(f"unknown scoring {scoring!r}; use one of {SCORINGS}")
    pairs = [(fold(t, scoring), fold(p, scoring)) for t, p in zip(truth, predicted)]
    if scoring == "cross-domain":
        pairs = [(t, p) for t, p in pairs if t != OTHER]
        labels = list(L.CROSS_DOMAIN_CLASSES) + [OTHER]
    elif scoring == "pbc-folders":
        labels = list(L.PBC_FOLDERS)
    else:
        labels = sorted(set(model_labels or []) | {t for t, _ in pairs} | {p for _, p in pairs})
    if not pairs:
        raise InputError(f"nothing to score: no true labels among the {scoring} classes")
    t, p = zip(*pairs)
    return classification_report(list(t), list(p), labels)
