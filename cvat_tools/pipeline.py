"""The Pipeline: one image in, labelled cell instances out.

Every delivery path (``cvat-tools predict``, the Nuclio function, the cvat-sdk function) calls
:meth:`Pipeline.run`, so one image gives the same cells, masks, labels and attributes in each.

    image (RGB uint8) -> segmenter -> masks + detection scores
                      -> cell_crop per mask -> classifier (batched) [-> refiner (batched)]
                      -> rule.combine -> Instance(label, Mask, score, attributes)

``Instance.score`` is the segmenter's detection score (what ``threshold`` filters and what CVAT
shows as confidence); the class evidence is in the attributes (see :func:`attribute_specs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import labels as label_set
from .bundle import CLASSICAL, MANIFEST, is_classical, read_manifest, shipped_bundle
from .crops import cell_crop
from .errors import BundleError, InputError
from .formats.annotations import AttributeSpec, Instance, LabelSpec
from .models.protocols import CellModel, Decision, Prediction, Rule
from .scale import Scale
from .segment.base import Detection, Segmenter

REVIEW_THRESHOLD = 0.6  # a final class score below this asks a human to look
NO_REFINER = "none"  # refiner attribute value when no refiner answered (none loaded, band/blast)
UNCLASSIFIED = "wbc"  # label of a segmentation-only pipeline (no classifier)
CLASSIFY_BATCH = 32  # crops per forward pass: bounds memory on a 100-cell 4032x3024 field

# Attribute names, in the order they are declared everywhere.
ATTR_CLASSIFIER = "classifier"
ATTR_CLASSIFIER_SCORE = "classifier_score"
ATTR_REFINER = "refiner"
ATTR_REFINER_SCORE = "refiner_score"
ATTR_NEEDS_REVIEW = "needs_review"
ATTR_REVIEW_REASON = "review_reason"

# Why a cell needs review (the review_reason values; the first is CVAT's default).
REASON_NONE = "none"
REASON_DISAGREE = "disagree"  # classifier and refiner name different types
REASON_LOW_SCORE = "low score"  # the final class score is below the review threshold
REASON_BOTH = "disagree, low score"
REVIEW_REASONS = (REASON_NONE, REASON_DISAGREE, REASON_LOW_SCORE, REASON_BOTH)
ATTR_REVIEW_PRIORITY = "review_priority"


def attribute_specs() -> list[AttributeSpec]:
    """The attributes every instance carries: ONE declaration for the Nuclio ``spec``, the
    cvat-sdk function spec and the CVAT XML ``<meta>``.

    Scores are integer percents ("number" 0..100 step 1): CVAT's lambda manager (2.42) keeps
    a number attribute only when ``int(value)`` parses within the range and on the step
    (older CVAT: ``value.isnumeric()``) and cvat-sdk only when ``int(value)`` parses, so
    "87" passes all of them where "0.87" would be dropped (tests/test_cvat_replay.py).
    """
    percent = ["0", "100", "1"]
    return [
        AttributeSpec(ATTR_CLASSIFIER, "select", list(label_set.ALL_CLASSES),
                      default=label_set.ALL_CLASSES[0]),
        AttributeSpec(ATTR_CLASSIFIER_SCORE, "number", list(percent), default="0"),
        AttributeSpec(ATTR_REFINER, "select", [NO_REFINER, *label_set.ALL_CLASSES],
                      default=NO_REFINER),
        AttributeSpec(ATTR_REFINER_SCORE, "number", list(percent), default="0"),
        # CVAT stores a checkbox's values as [default].
        AttributeSpec(ATTR_NEEDS_REVIEW, "checkbox", ["false"], default="false"),
        # a select, not text: CVAT checks its values and filters on it (attr.review_reason)
        AttributeSpec(ATTR_REVIEW_REASON, "select", list(REVIEW_REASONS), default=REASON_NONE),
        # how much correcting this cell would teach `cvat-tools adapt` (review_priority())
        AttributeSpec(ATTR_REVIEW_PRIORITY, "number", list(percent), default="0"),
    ]


def label_specs(shape_type: str = "any") -> list[LabelSpec]:
    """Every label of ``labels.ALL_CLASSES`` with :func:`attribute_specs`."""
    return [LabelSpec(name=name, attributes=attribute_specs(), type=shape_type)
            for name in label_set.ALL_CLASSES]


def review_priority(decision: Any, classifier_pred: Any, refiner_pred: Any | None) -> float:
    """How much a correction of this cell would teach, in [0, 1]: half for a classifier /
    refiner disagreement (where the refiner has a say), half for a small margin between the
    deciding model's top two classes (1 - margin). Annotators who correct the highest first
    give ``cvat-tools adapt`` the cells the models are least sure of."""
    disagree = (decision.refiner_label is not None and decision.refiner_label != decision.classifier_label
                and decision.classifier_label not in label_set.CLASSIFIER_FINAL)
    decider = refiner_pred if refiner_pred is not None and decision.label == decision.refiner_label \
        and decision.classifier_label not in label_set.CLASSIFIER_FINAL else classifier_pred
    top = sorted((float(p) for p in decider.probs.values()), reverse=True)[:2] + [0.0, 0.0]
    return 0.5 * float(disagree) + 0.5 * (1.0 - (top[0] - top[1]))


def percent(score: float | None) -> str:
    """A [0, 1] score as CVAT's integer-percent attribute value."""
    if score is None or not np.isfinite(score):
        return "0"
    return str(int(round(min(max(float(score), 0.0), 1.0) * 100)))


def review_note(label: str, attributes: dict[str, str],
                threshold: float = REVIEW_THRESHOLD) -> str:
    """Why a cell was flagged, in words, from the attributes it carries (so it reads the same
    from a fresh run and from annotations read back): "" when it is not flagged.

    e.g. "classifier: eosinophil 0.91 / refiner: neutrophil 0.55", "low class score:
    lymphocyte 0.48 < 0.60". The number drawn beside a label is the *detection* score, which
    can be 1.00 on a cell whose type is in doubt.
    """
    reason = attributes.get(ATTR_REVIEW_REASON, REASON_NONE)
    if attributes.get(ATTR_NEEDS_REVIEW) != "true" or reason not in REVIEW_REASONS[1:]:
        return ""

    def score(name: str) -> str:
        value = attributes.get(name, "0")
        return f"{int(value) / 100:.2f}" if value.isdigit() else "?"

    notes = []
    clf, ref = attributes.get(ATTR_CLASSIFIER, "?"), attributes.get(ATTR_REFINER, NO_REFINER)
    if reason in (REASON_DISAGREE, REASON_BOTH):
        notes.append(f"classifier: {clf} {score(ATTR_CLASSIFIER_SCORE)} / "
                     f"refiner: {ref} {score(ATTR_REFINER_SCORE)}")
    if reason in (REASON_LOW_SCORE, REASON_BOTH):  # the final score is that of who named it
        final = score(ATTR_REFINER_SCORE if ref == label else ATTR_CLASSIFIER_SCORE)
        notes.append(f"low class score: {label} {final} < {threshold:.2f}")
    return "; ".join(notes)


@dataclass
class PipelineInfo:
    """Which models answer, for logs and reports."""

    segmenter: str
    classifier: str | None
    refiner: str | None


def _bundle_path(kind: str, explicit: str | Path | None, weights: str | Path | None) -> Path | None:
    """An explicit bundle wins; else ``weights/<kind>`` when ``weights`` is given; else shipped.

    A weights folder without segmenter/ is an error (it once fell back to the classical
    segmenter silently): ask for that one explicitly with ``segmenter="classical"`` or a
    segmenter/ made by :func:`cvat_tools.bundle.save_classical_segmenter`.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            hint = " (or 'classical' for the watershed segmenter)" if kind == "segmenter" else ""
            raise BundleError(f"{path}: no such {kind} bundle folder{hint}")
        return path
    if weights is not None:
        folder = Path(weights)
        if not folder.is_dir():
            raise BundleError(
                f"{folder}: no such weights folder; it must hold segmenter/, classifier/, "
                "refiner/ bundles (any may be missing)"
            )
        path = folder / kind
        if (path / MANIFEST).is_file():
            return path
        if kind == "segmenter":
            raise BundleError(
                f"{folder}: no segmenter/ bundle in this weights folder; add one (made by "
                "'cvat-tools train segmenter'), or ask for the classical watershed segmenter "
                f"explicitly ({CLASSICAL_HINT})"
            )
        return None
    return shipped_bundle(kind)


CLASSICAL_HINT = "--segmenter classical, CVAT_TOOLS_SEGMENTER=classical, -p segmenter=str:classical"


def asks_for_none(refiner: str | Path | None) -> bool:
    """True for refiner "none" (no refiner: the classifier's answer is final), unless a
    folder of that name exists."""
    return refiner is not None and str(refiner) == NO_REFINER and not Path(str(refiner)).exists()


def check_pair(classifier: Path | None, refiner: Path | None) -> None:
    """Refuse a classifier and a refiner that cannot work together, from their manifests alone
    (small JSON files), before any weights load.

    The refiner names only types the classifier knows (the rule hands the refiner's answer
    on as the final label, and its review flag compares the two). Input sizes need not match:
    each model cuts its own crops at its own size.
    """
    if classifier is None or refiner is None:
        return
    manifests = {}
    for kind, path in (("classifier", classifier), ("refiner", refiner)):
        manifest = read_manifest(path)
        if manifest["kind"] != kind:
            raise BundleError(f"{path}: is a {manifest['kind']} bundle, but the {kind} must be a "
                              f"{kind} bundle (made by 'cvat-tools train {kind}')")
        manifests[kind] = manifest
    known = manifests["classifier"]["labels"]
    unknown = [lab for lab in manifests["refiner"]["labels"] if lab not in known]
    if unknown:
        raise BundleError(
            f"refiner {refiner} does not fit classifier {classifier}: the refiner names "
            f"{unknown}, which the classifier does not know ({len(known)} labels: "
            f"{', '.join(known)}); use a refiner trained for this classifier, or refiner 'none'"
        )


class Pipeline:
    """Segment, crop, classify, refine, decide: the one inference path of the project."""

    def __init__(
        self,
        segmenter: Segmenter,
        classifier: CellModel | None = None,
        refiner: CellModel | None = None,
        rule: Rule | None = None,
        review_threshold: float = REVIEW_THRESHOLD,
        info: PipelineInfo | None = None,
    ) -> None:
        if rule is None:
            from .classify.rule import combine as rule
        self.segmenter = segmenter
        self.classifier = classifier
        self.refiner = refiner
        self.rule = rule
        self.review_threshold = float(review_threshold)
        self.info = info or PipelineInfo(
            segmenter=type(segmenter).__name__,
            classifier=type(classifier).__name__ if classifier is not None else None,
            refiner=type(refiner).__name__ if refiner is not None else None,
        )

    @classmethod
    def load(
        cls,
        segmenter: str | Path | None = None,
        classifier: str | Path | None = None,
        refiner: str | Path | None = None,
        weights: str | Path | None = None,
        device: str = "cpu",
        review_threshold: float = REVIEW_THRESHOLD,
        require_classifier: bool = True,
        cell_size: float | None = None,
        um_per_px: float | None = None,
        scale: str = "auto",
    ) -> "Pipeline":
        """Build the pipeline from bundles.

        Each model comes from its explicit bundle path, else ``weights/<kind>/`` when a
        weights folder is given (how the Nuclio image and ``-p weights=`` pass them), else the
        shipped bundle. ``segmenter="classical"`` asks for the classical watershed segmenter (so
        does no shipped segmenter; a weights folder must say so, see :func:`_bundle_path`);
        ``refiner="none"`` (or no refiner bundle) makes the classifier's answer final; a
        classifier and refiner that do not fit are refused from their manifests before any
        weights load (:func:`check_pair`). A classifier is required (the
        labels CVAT receives are cell types) unless ``require_classifier=False``, which gives
        segmentation only, every cell labelled "wbc". ``cell_size`` (typical WBC diameter in
        input px) or ``um_per_px`` fix the scale; else each image's is estimated
        (cvat_tools/scale.py; ``scale="fixed"``: the old long-side rule).
        """
        from .models.registry import load_model

        clf_path = _bundle_path("classifier", classifier, weights)
        ref_path = None if asks_for_none(refiner) else _bundle_path("refiner", refiner, weights)
        if clf_path is None and require_classifier:
            where = f"in {weights}/classifier" if weights is not None else "shipped with cvat-tools"
            raise BundleError(
                f"no classifier bundle {where}; pass one (--classifier BUNDLE, made by "
                "'cvat-tools train classifier') or install the shipped weights"
            )
        check_pair(clf_path, ref_path)  # seconds before the models load, not after
        classical = str(segmenter) == CLASSICAL and not Path(str(segmenter)).exists()
        seg_path = None if classical else _bundle_path("segmenter", segmenter, weights)
        if seg_path is not None and is_classical(read_manifest(seg_path)):
            seg_path, classical = None, True
        if seg_path is None:  # _bundle_path already looked for the shipped one
            from .segment.classical import ClassicalSegmenter

            seg_model = ClassicalSegmenter()
        else:
            seg_model = load_model("segmenter", seg_path, device=device)
        set_scale = getattr(seg_model, "set_scale", None)
        if set_scale is not None:  # one scale option for every entry point
            set_scale(scale, cell_size, um_per_px)
        elif cell_size is not None or um_per_px is not None:
            from .scale import check_cell_size

            check_cell_size(cell_size, um_per_px)  # the classical segmenter sizes itself
        clf_model = ref_model = None
        if clf_path is not None:
            clf_model = load_model("classifier", clf_path, device=device)
            if ref_path is not None:
                ref_model = load_model("refiner", ref_path, device=device,
                                       classifier_labels=clf_model.labels)
        info = PipelineInfo(
            segmenter=str(seg_path) if seg_path else
            f"classical ({type(seg_model).__name__}{', asked for' if classical else ''})",
            classifier=str(clf_path) if clf_path else None,
            refiner=str(ref_path) if ref_path else None,
        )
        return cls(seg_model, clf_model, ref_model, review_threshold=review_threshold, info=info)

    # -- inference ------------------------------------------------------------------------

    @property
    def last_scale(self) -> Scale | None:
        """The segmenter's :class:`~cvat_tools.scale.Scale` of the latest :meth:`run` (None
        for segmenters that size images themselves, such as the classical one)."""
        return getattr(self.segmenter, "last_scale", None)

    def run(self, image: np.ndarray, threshold: float = 0.5,
            stage: Callable[[str], None] | None = None) -> list[Instance]:
        """Labelled instances of one RGB uint8 image (H x W x 3), detection score >= threshold.

        ``stage`` (optional) is told what starts ("segmenting", "classifying N cells"): a
        progress display for fields that take seconds each."""
        stage = stage or (lambda _text: None)
        image = np.asarray(image)
        stage("segmenting")
        detections = self.detect(image, threshold)
        if not detections or self.classifier is None:
            return self.decide(detections, [], [])
        stage(f"classifying {len(detections)} cells")
        clf_preds = self._predict(self.classifier, image, detections)
        ref_preds: Sequence[Prediction | None] = (
            self._predict(self.refiner, image, detections)
            if self.refiner is not None else [None] * len(detections)
        )
        return self.decide(detections, clf_preds, ref_preds)

    def detect(self, image: np.ndarray, threshold: float = 0.5) -> list[Any]:
        """The segmenter's detections of one RGB uint8 image with score >= threshold and a
        non-empty mask: the cells :meth:`run` labels (``cvat-tools explain`` starts here)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(
                f"pipeline input must be an RGB uint8 array (H x W x 3), got {image.dtype} "
                f"{image.shape}; read images with cvat_tools.imaging.load_image"
            )
        if not 0.0 <= float(threshold) <= 1.0:
            raise InputError(f"threshold {threshold} is outside [0, 1]")
        return [
            d for d in self.segmenter.segment(image, threshold=threshold)
            if d.score >= threshold and np.asarray(d.mask.bitmap).any()
        ]

    def crops(self, image: np.ndarray, detections: Sequence[Any], size: int) -> list[np.ndarray]:
        """The masked crop of each detection, as the classifier and the refiner receive it."""
        return [cell_crop(image, d.mask.bitmap, d.mask.left, d.mask.top, size=size)
                for d in detections]

    def decide(self, detections: Sequence[Any], clf_preds: Sequence[Any],
               ref_preds: Sequence[Any | None]) -> list[Instance]:
        """Instances from the detections and each model's predictions (rule + attributes);
        without a classifier every cell is "wbc"."""
        if self.classifier is None:
            return [
                Instance(label=UNCLASSIFIED, geometry=d.mask, score=float(d.score),
                         source="auto")
                for d in detections
            ]
        decisions = [self.rule(c, r) for c, r in zip(clf_preds, ref_preds)]
        return [
            self._instance(d, decision, review_priority(decision, c, r))
            for d, decision, c, r in zip(detections, decisions, clf_preds, ref_preds)
        ]

    def _predict(self, model: CellModel, image: np.ndarray,
                 detections: Sequence[Detection]) -> list[Prediction]:
        size = int(model.input_size)  # the bundle's manifest says it; no default guesses one
        preds: list[Prediction] = []
        for start in range(0, len(detections), CLASSIFY_BATCH):
            preds.extend(model.predict(
                self.crops(image, detections[start:start + CLASSIFY_BATCH], size)))
        return preds

    def _instance(self, detection: Detection, decision: Decision, priority: float = 0.0) -> Instance:
        return Instance(
            label=decision.label,
            geometry=detection.mask,
            score=float(detection.score),
            attributes={**decision_attributes(decision, self.review_threshold),
                        ATTR_REVIEW_PRIORITY: percent(priority)},
            source="auto",
        )


def decision_attributes(decision: Decision, review_threshold: float = REVIEW_THRESHOLD) -> dict[str, str]:
    """The attributes of one rule decision (classify/rule.py ``Decision``): both models'
    answers, the review flag and its reason. Every entry point (predict, the functions,
    classify) labels a cell through this."""
    # A disagreement counts only where the refiner has a say: for band and blast cells
    # (labels.CLASSIFIER_FINAL) it does not know the class, so it cannot agree.
    disagree = (
        decision.refiner_label is not None
        and decision.refiner_label != decision.classifier_label
        and decision.classifier_label not in label_set.CLASSIFIER_FINAL
    )
    low = float(decision.score) < review_threshold
    return {
        ATTR_CLASSIFIER: decision.classifier_label,
        ATTR_CLASSIFIER_SCORE: percent(decision.classifier_score),
        ATTR_REFINER: decision.refiner_label or NO_REFINER,
        ATTR_REFINER_SCORE: percent(decision.refiner_score),
        ATTR_NEEDS_REVIEW: "true" if disagree or low else "false",
        ATTR_REVIEW_REASON: REVIEW_REASONS[int(disagree) + 2 * int(low)],
    }


def check_attributes(instance: Instance) -> list[str]:
    """Problems of an instance against :func:`attribute_specs` (empty list = valid).

    Used by the tests and as a guard before anything is sent to CVAT.
    """
    problems = []
    specs = {spec.name: spec for spec in attribute_specs()}
    for name, value in instance.attributes.items():
        spec = specs.get(name)
        if spec is None:
            problems.append(f"undeclared attribute {name!r}")
        elif spec.input_type in ("select", "radio") and value not in spec.values:
            problems.append(f"{name}={value!r} not among {spec.values}")
        elif spec.input_type == "number":
            lo, hi, step = (int(v) for v in spec.values)
            if not value.isnumeric() or not lo <= int(value) <= hi or (int(value) - lo) % step:
                problems.append(f"{name}={value!r} is not an integer in [{lo}, {hi}]")
        elif spec.input_type == "checkbox" and value not in ("true", "false"):
            problems.append(f"{name}={value!r} is not true/false")
    if instance.label not in label_set.ALL_CLASSES and instance.label != UNCLASSIFIED:
        problems.append(f"label {instance.label!r} is not in labels.ALL_CLASSES")
    return problems
