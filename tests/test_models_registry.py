"""models/registry.py: one loader per bundle kind, and Pipeline.load goes through it."""
from __future__ import annotations

import pytest

from cvat_tools.bundle import KINDS
from cvat_tools.errors import BundleError
from cvat_tools.models import registry
from cvat_tools.pipeline import Pipeline
from cvat_tools.segment.classical import ClassicalSegmenter
from pipeline_fakes import FakeModel


def test_every_kind_has_a_loader_and_others_are_refused():
    assert set(registry.LOADERS) == set(KINDS)
    with pytest.raises(BundleError, match="no loader for bundle kind 'virus'"):
        registry.load_model("virus", None)


def test_pipeline_load_builds_its_models_through_the_registry(tmp_path, monkeypatch):
    calls = []

    def fake(kind, model):
        def load(bundle, device="cpu", **options):
            calls.append((kind, bundle, device, options))
            return model
        return load

    clf, ref = FakeModel([("lymphocyte", 0.9)]), FakeModel([("lymphocyte", 0.8)])
    monkeypatch.setitem(registry.LOADERS, "classifier", fake("classifier", clf))
    monkeypatch.setitem(registry.LOADERS, "refiner", fake("refiner", ref))
    # the manifests' pairing check reads real manifest files; this test is about the loaders
    import cvat_tools.pipeline as pipeline_module
    monkeypatch.setattr(pipeline_module, "check_pair", lambda *_: None)
    (tmp_path / "c").mkdir()
    (tmp_path / "r").mkdir()
    pipe = Pipeline.load(segmenter="classical", classifier=tmp_path / "c", refiner=tmp_path / "r")
    assert pipe.classifier is clf and pipe.refiner is ref
    assert isinstance(pipe.segmenter, ClassicalSegmenter)
    assert calls == [("classifier", tmp_path / "c", "cpu", {}),
                     ("refiner", tmp_path / "r", "cpu", {"classifier_labels": clf.labels})]
