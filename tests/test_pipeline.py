"""Pipeline: one image -> labelled Mask instances with CVAT-valid attributes."""
from __future__ import annotations

import numpy as np
import pytest

from cvat_tools import labels
from cvat_tools.errors import BundleError, InputError
from cvat_tools.formats.annotations import Mask
from cvat_tools.imaging import load_image
from cvat_tools.pipeline import (
    NO_REFINER, Pipeline, attribute_specs, check_attributes, label_specs, percent,
)
from pipeline_fakes import (
    FakeModel, GridSegmenter, TINY_INPUT, shared_weights,
)


@pytest.fixture(scope="module")
def bccd_image(bccd_dir):
    return load_image(bccd_dir / "images" / "BloodImage_00002.jpg")


def test_attribute_specs_are_cvat_valid():
    specs = attribute_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    by_name = {s.name: s for s in specs}
    assert by_name["classifier"].values == list(labels.ALL_CLASSES)
    assert by_name["refiner"].values[0] == NO_REFINER
    assert set(labels.ALL_CLASSES) <= set(by_name["refiner"].values)
    assert by_name["needs_review"].input_type == "checkbox"
    for s in specs:
        if s.input_type in ("select", "radio"):
            assert s.default in s.values
    assert [ls.name for ls in label_specs()] == list(labels.ALL_CLASSES)


def test_percent_is_an_integer_string():
    assert percent(0.874) == "87" and percent(1.0) == "100" and percent(0) == "0"
    assert percent(None) == "0" and percent(float("nan")) == "0" and percent(1.5) == "100"


def test_needs_review_on_disagreement_or_low_score():
    image = np.full((40, 200, 3), 200, np.uint8)
    clf = FakeModel([("neutrophil", 0.9), ("neutrophil", 0.9), ("band cell", 0.95),
                     ("monocyte", 0.5)])
    ref = FakeModel([("neutrophil", 0.8), ("eosinophil", 0.9), ("neutrophil", 0.99),
                     ("monocyte", 0.55)], labels_=labels.SHARED_CLASSES)
    pipe = Pipeline(GridSegmenter(4), clf, ref, review_threshold=0.6)  # real rule.combine
    out = pipe.run(image, threshold=0.5)
    assert [i.label for i in out] == ["neutrophil", "eosinophil", "band cell", "monocyte"]
    review = [i.attributes["needs_review"] for i in out]
    # agree+confident, disagree, band (classifier final: the refiner cannot know it), low score
    assert review == ["false", "true", "false", "true"]
    assert out[1].attributes["classifier"] == "neutrophil"
    assert out[1].attributes["refiner"] == "eosinophil"
    assert out[1].attributes["refiner_score"] == "90"
    assert out[2].attributes["refiner"] == "neutrophil"  # its answer is shown, not used
    no_ref = Pipeline(GridSegmenter(1), FakeModel([("lymphocyte", 0.9)])).run(image)
    assert no_ref[0].attributes["refiner"] == NO_REFINER
    assert no_ref[0].attributes["refiner_score"] == "0"
    for inst in out:
        assert check_attributes(inst) == []
        assert isinstance(inst.geometry, Mask)


def test_crops_are_batched_and_threshold_filters():
    image = np.full((200, 200, 3), 200, np.uint8)
    clf = FakeModel([("lymphocyte", 0.9)], input_size=24)
    pipe = Pipeline(GridSegmenter(70, side=8), clf)
    out = pipe.run(image, threshold=0.0)
    assert len(out) == 70 and clf.batches == [32, 32, 6]
    assert all(i.attributes["refiner"] == NO_REFINER for i in out)
    # scores descend 0.99, 0.98, ...: threshold 0.95 keeps 5
    assert len(pipe.run(image, threshold=0.95)) == 5
    assert all(i.score >= 0.95 for i in pipe.run(image, threshold=0.95))


def test_bad_input_is_refused():
    pipe = Pipeline(GridSegmenter(1), FakeModel([("lymphocyte", 0.9)]))
    with pytest.raises(InputError, match="RGB uint8"):
        pipe.run(np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="threshold"):
        pipe.run(np.zeros((10, 10, 3), np.uint8), threshold=1.5)


def test_segmentation_only_labels_wbc():
    out = Pipeline(GridSegmenter(2), None).run(np.zeros((20, 40, 3), np.uint8))
    assert [i.label for i in out] == ["wbc", "wbc"] and out[0].attributes == {}


def test_load_needs_a_classifier(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no classifier bundle"):
        Pipeline.load(weights=tmp_path / "empty")
    with pytest.raises(BundleError, match="no such weights folder"):
        Pipeline.load(weights=tmp_path / "missing")
    with pytest.raises(BundleError, match="no such classifier bundle"):
        Pipeline.load(classifier=tmp_path / "nope")


def test_real_pipeline_on_bccd_is_deterministic(weights_dir, bccd_image):
    pipe = Pipeline.load(weights=weights_dir)
    assert pipe.info.classifier.endswith("classifier") and pipe.refiner is None
    first = pipe.run(bccd_image, threshold=0.5)
    again = pipe.run(bccd_image.copy(), threshold=0.5)
    assert len(first) >= 1
    for a, b in zip(first, again, strict=True):
        assert a.label == b.label and a.geometry == b.geometry and a.attributes == b.attributes
    for inst in first:
        assert inst.label in labels.ALL_CLASSES
        assert check_attributes(inst) == []
        assert pipe.classifier.input_size == TINY_INPUT


def test_load_a_maskrcnn_segmenter_bundle(tmp_path):
    """An explicit segmenter bundle replaces the classical fallback (random tiny Mask R-CNN)."""
    import torch

    from cvat_tools.bundle import save_bundle
    from cvat_tools.segment.maskrcnn import LABELS, MaskRCNNSegmenter, build_model

    tiny = {"long_side": 128, "fpn_channels": 32, "box_head": 64, "mask_head": [32]}
    torch.manual_seed(0)
    model = build_model(tiny, pretrained=False)
    path = save_bundle(tmp_path / "seg", kind="segmenter", state_dict=model.state_dict(),
                       labels=LABELS, architecture={"name": "maskrcnn",
                                                     "backbone": "efficientnet_lite0", **tiny})
    pipe = Pipeline.load(segmenter=path, weights=shared_weights())
    assert isinstance(pipe.segmenter, MaskRCNNSegmenter) and pipe.info.segmenter == str(path)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for inst in pipe.run(image, threshold=0.0):
        assert isinstance(inst.geometry, Mask) and check_attributes(inst) == []


def test_review_priority_ranks_disagreement_then_small_margins():
    """Issue 17's review queue: a disagreement outranks any agreement; among agreements the
    smaller margin between the decider's top two classes ranks higher; band cells are judged
    on the classifier (the refiner has no say)."""
    image = np.full((40, 200, 3), 200, np.uint8)
    clf = FakeModel([("neutrophil", 0.9), ("neutrophil", 0.9), ("band cell", 0.94), ("monocyte", 0.5)])
    ref = FakeModel([("neutrophil", 0.98), ("eosinophil", 0.9), ("neutrophil", 0.2), ("monocyte", 0.55)],
                    labels_=labels.SHARED_CLASSES)
    out = Pipeline(GridSegmenter(4), clf, ref).run(image, threshold=0.5)
    priority = [int(i.attributes["review_priority"]) for i in out]
    # 1 - margin halves: refiner 0.98 -> 1; disagreement 50 + 5; band: classifier 0.94 -> 3;
    # agreement at refiner 0.55 -> 22
    assert priority == [1, 55, 3, 22]
