"""Hostile or careless bundle manifests and weights folders (issue 19): one-line BundleError,
no giant allocation, labels bound to their weights, no silent fallback to another model."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from cvat_tools import bundle, labels
from cvat_tools.errors import BundleError
from cvat_tools.pipeline import Pipeline
from pipeline_fakes import make_random_classifier


def _toy(path, labels_=("a", "b", "c")):
    bundle.save_bundle(path, "classifier", {"w": torch.randn(3, 4)}, list(labels_), {"name": "toy"},
                       input_size=64)
    return path


def _edit(path, change):
    manifest_path = path / bundle.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    change(manifest)
    manifest_path.write_text(json.dumps(manifest))


def _refused(path, match):
    start = time.monotonic()
    with pytest.raises(BundleError, match=match) as info:
        bundle.load_bundle(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert time.monotonic() - start < 5


def _set(key, value):
    def change(m):
        m[key] = value
    return change


def _set_weights(key, value):
    def change(m):
        m["weights"][key] = value
    return change


def _set_arch(key, value):
    def change(m):
        m["architecture"][key] = value
    return change


@pytest.mark.parametrize("change, match", [
    (_set("labels", []), "labels must be a non-empty list"),
    (lambda m: m.pop("labels"), "labels must be a non-empty list"),
    (_set("labels", ["a", 3, "c"]), "labels must be a non-empty list"),
    (_set("labels", ["a", "a", "b"]), "repeat"),
    (_set("format_version", "1"), "format_version must be a positive integer"),
    (_set("format_version", 99), "newer than this cvat-tools"),
    (_set("input_size", 100000), "input_size must be an integer in"),
    (_set("input_size", "160"), "input_size must be an integer in"),
    (lambda m: m.pop("input_size"), "classifier bundle must record input_size"),
    (_set_arch("long_side", 100000), "long_side must be an integer in"),
    (_set("kind", "virus"), "kind must be one of"),
    (_set("architecture", [1, 2]), "architecture must be an object"),
    (_set_weights("file", "../../etc/passwd"), "weights.file must be a file name"),
    (lambda m: m["weights"].pop("sha256"), "weights.sha256 missing"),
    (_set("labels", ["c", "b", "a"]), "not the labels these weights were saved with"),
    (_set("kind", "refiner"), "not the labels these weights were saved with"),
])
def test_bad_manifest_field_is_one_line(tmp_path, change, match):
    path = _toy(tmp_path / "b")
    _edit(path, change)
    _refused(path, match)


def test_deep_json_manifest_is_one_line(tmp_path):
    path = _toy(tmp_path / "b")
    (path / bundle.MANIFEST).write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _refused(path, "nested too deeply")


def test_not_json_manifest_is_one_line(tmp_path):
    path = _toy(tmp_path / "b")
    (path / bundle.MANIFEST).write_bytes(b"\xff\xfe not json")
    _refused(path, "unreadable manifest")


def test_new_bundles_bind_labels_to_weights(tmp_path):
    path = _toy(tmp_path / "b")
    manifest = json.loads((path / bundle.MANIFEST).read_text())
    expected = bundle.labels_binding("classifier", ["a", "b", "c"], manifest["weights"]["sha256"])
    assert manifest["weights"]["labels_sha256"] == expected
    assert bundle.load_bundle(path).labels == ["a", "b", "c"]


def test_bundles_without_a_binding_still_load(tmp_path):
    """Bundles written before labels_sha256 existed keep loading (nothing to check against)."""
    path = _toy(tmp_path / "b")
    _edit(path, lambda m: m["weights"].pop("labels_sha256"))
    assert bundle.load_bundle(path).labels == ["a", "b", "c"]


@pytest.mark.parametrize("kind", bundle.KINDS)
def test_shipped_manifests_carry_a_valid_binding(kind):
    path = bundle.shipped_bundle(kind)
    if path is None:
        pytest.skip(f"no shipped {kind}")
    manifest = bundle.read_manifest(path)
    assert manifest["weights"]["labels_sha256"] == bundle.labels_binding(
        kind, manifest["labels"], manifest["weights"]["sha256"])


def test_shipped_classifier_with_permuted_labels_is_refused(tmp_path):
    shipped = bundle.shipped_bundle("classifier")
    if shipped is None:
        pytest.skip("no shipped classifier")
    copy = tmp_path / "clf"
    copy.mkdir()
    (copy / bundle.WEIGHTS).symlink_to(shipped / bundle.WEIGHTS)
    manifest = json.loads((shipped / bundle.MANIFEST).read_text())
    a, b = manifest["labels"].index("lymphocyte"), manifest["labels"].index("neutrophil")
    manifest["labels"][a], manifest["labels"][b] = manifest["labels"][b], manifest["labels"][a]
    (copy / bundle.MANIFEST).write_text(json.dumps(manifest))
    _refused(copy, "not the labels these weights were saved with")


def test_foreign_head_is_refused(tmp_path):
    """Weights with 3 classes under a manifest listing 11 (binding recomputed, as a hand-made
    manifest would be): the head's shape does not fit the labels."""
    from cvat_tools.classify.classifier import CellClassifier, build_classifier

    model = build_classifier("efficientnet_lite0", 3, pretrained=False)
    path = bundle.save_bundle(tmp_path / "clf", "classifier", model.state_dict(),
                              list(labels.ALL_CLASSES[:3]), {"backbone": "efficientnet_lite0"},
                              input_size=32)

    def relabel(m):
        m["labels"] = list(labels.ALL_CLASSES)
        m["weights"]["labels_sha256"] = bundle.labels_binding("classifier", m["labels"],
                                                               m["weights"]["sha256"])
    _edit(path, relabel)
    with pytest.raises(BundleError, match="weights do not fit") as info:
        CellClassifier.from_bundle(path)
    assert "\n" not in str(info.value)


# -- weights folders ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    make_random_classifier(root / "classifier")
    return root


def test_weights_folder_without_segmenter_is_an_error(classifier_only):
    with pytest.raises(BundleError, match="no segmenter/ bundle") as info:
        Pipeline.load(weights=classifier_only)
    assert "classical" in str(info.value)  # names the explicit way out


def test_classical_segmenter_when_asked(classifier_only, tmp_path):
    pipe = Pipeline.load(weights=classifier_only, segmenter="classical")
    assert type(pipe.segmenter).__name__ == "ClassicalSegmenter"
    assert "asked for" in pipe.info.segmenter
    folder = tmp_path / "w"
    shutil.copytree(classifier_only, folder)
    bundle.save_classical_segmenter(folder / "segmenter")
    pipe = Pipeline.load(weights=folder)
    assert type(pipe.segmenter).__name__ == "ClassicalSegmenter"
    with pytest.raises(BundleError, match="no weights"):
        bundle.load_bundle(folder / "segmenter", kind="segmenter")


def test_predict_cli_names_the_missing_segmenter(classifier_only, tmp_path, bccd_dir):
    from cli_run import run_cli

    image = bccd_dir / "images" / "BloodImage_00002.jpg"
    code, out, err = run_cli("predict", image, "--out", tmp_path / "o", "--weights", classifier_only)
    assert code == 2 and "no segmenter/ bundle" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    code, out, err = run_cli("predict", image, "--out", tmp_path / "o", "--weights", classifier_only,
                             "--segmenter", "classical")
    assert code == 0, err
