"""``cvat-tools evaluate embedding``: features, alignment numbers, plot and JSON, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_run import run_cli

from cvat_tools.explain.embedding import alignment, centroid_distances, domain_accuracy, penultimate


def _two_labs(shift: float, n: int = 40, dim: int = 20, seed: int = 0):
    """Two labs x two classes; lab b's features moved by ``shift`` along one axis."""
    rng = np.random.default_rng(seed)
    feats, labs, labels = [], [], []
    for lab, offset in (("a", 0.0), ("b", shift)):
        for k, cls in enumerate(("neutrophil", "lymphocyte")):
            x = rng.normal(0, 1, (n, dim))
            x[:, 0] += 6.0 * k  # the classes differ everywhere
            x[:, 1] += offset
            feats.append(x)
            labs += [lab] * n
            labels += [cls] * n
    return np.concatenate(feats), np.array(labs), np.array(labels)


def test_domain_accuracy_is_chance_for_one_lab_and_high_for_shifted_labs():
    same = domain_accuracy(*_two_labs(0.0), "a", "b")
    moved = domain_accuracy(*_two_labs(4.0), "a", "b")
    assert same["classes"] == ["lymphocyte", "neutrophil"] and same["per_lab"] == 80
    assert 0.3 <= same["accuracy"] <= 0.65
    assert moved["accuracy"] >= 0.95


def test_class_mix_alone_does_not_betray_the_lab():
    """Lab b has mostly lymphocytes, lab a mostly neutrophils, same features per class: the
    balanced domain classifier stays near chance (an unbalanced one would score ~0.8)."""
    feats, labs, labels = _two_labs(0.0, n=60)
    keep = np.ones(len(labs), bool)
    keep[np.flatnonzero((labs == "a") & (labels == "lymphocyte"))[15:]] = False
    keep[np.flatnonzero((labs == "b") & (labels == "neutrophil"))[15:]] = False
    result = domain_accuracy(feats[keep], labs[keep], labels[keep], "a", "b")
    assert result["per_lab"] == 30 and result["accuracy"] <= 0.7


def test_centroid_distance_grows_with_the_shift():
    near = centroid_distances(*_two_labs(0.0), "a", "b")
    far = centroid_distances(*_two_labs(4.0), "a", "b")
    assert set(near) == {"lymphocyte", "neutrophil"} and near["neutrophil"]["n"] == [40, 40]
    assert all(near[c]["relative"] < 0.25 and far[c]["relative"] > 1.5 * near[c]["relative"]
               for c in near)


def test_alignment_skips_classes_one_lab_lacks():
    feats, labs, labels = _two_labs(1.0)
    labels = labels.copy()
    labels[(labs == "b") & (labels == "lymphocyte")] = "monocyte"
    pairs = alignment(feats, list(labs), list(labels))
    assert list(pairs) == ["a vs b"]
    assert pairs["a vs b"]["domain_accuracy"]["classes"] == ["neutrophil"]
    assert set(pairs["a vs b"]["centroid_distance"]) == {"neutrophil"}


def test_penultimate_features_feed_the_label_head(shipped_classifier, bccd_dir):
    import torch

    from cvat_tools.data.cells import bccd_crops

    crops = [c.crop for c in bccd_crops(bccd_dir, size=shipped_classifier.input_size)[:5]]
    feats = penultimate(shipped_classifier, crops, batch_size=2)
    assert feats.shape == (5, shipped_classifier.model.classifier.in_features)
    logits = shipped_classifier.model.classifier(torch.from_numpy(feats))
    expected = [p.label for p in shipped_classifier.predict(crops)]
    labels = shipped_classifier.labels
    if shipped_classifier._prior is None:
        assert [labels[i] for i in logits.argmax(1).tolist()] == expected
    got = shipped_classifier.predictions(logits)
    assert [p.label for p in got] == expected


@pytest.fixture(scope="module")
def jtsc_part(tmp_path_factory, jtsc_dir):
    """The first 40 JTSC images with their masks (the reader reads every row it is given)."""
    import shutil

    root = tmp_path_factory.mktemp("jtsc") / "jtsc_wbc"
    rows = (jtsc_dir / "index.csv").read_text().splitlines()[:41]
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for row in rows[1:]:
        image, mask = row.split(",")[:2]
        shutil.copy(jtsc_dir / image, root / image)
        shutil.copy(jtsc_dir / mask, root / mask)
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory, bccd_dir, jtsc_part, shipped_paths):
    out = tmp_path_factory.mktemp("emb") / "plot.png"
    result = run_cli("evaluate", "embedding", "--data", bccd_dir, "--data", jtsc_part, "--out", out,
                     "--per-lab", 25, "--bundle", shipped_paths["classifier"],
                     "--bundle", shipped_paths["refiner"])
    return out, result


def test_embedding_plot_and_numbers(embedding_run):
    out, (code, stdout, stderr) = embedding_run
    assert code == 0, stderr
    from PIL import Image

    assert Image.open(out).size[0] > 800
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["command"] == "cvat-tools evaluate embedding"
    assert record["labs"]["bccd"]["crops"] == 25 and record["labs"]["jtsc"]["crops"] == 25
    assert len(record["models"]) == 2
    for model in record["models"].values():
        pair = model["pairs"]["bccd vs jtsc"]
        acc = pair["domain_accuracy"]["accuracy"]
        assert 0.0 <= acc <= 1.0 and "neutrophil" in pair["centroid_distance"]
    assert "domain accuracy" in stdout


def test_out_policy_replaces_only_its_own_plot(tmp_path, embedding_run):
    from cvat_tools.errors import InputError
    from cvat_tools.outdir import check_out_with_record

    out, _ = embedding_run
    check_out_with_record(out, out.with_suffix(".json"), "evaluate embedding")  # ours: may replace
    with pytest.raises(InputError, match="was not written by 'cvat-tools evaluate classifier'"):
        check_out_with_record(out, out.with_suffix(".json"), "evaluate classifier")
    lone = tmp_path / "lone.png"
    lone.write_bytes(b"x")  # a PNG without our record beside it
    with pytest.raises(InputError, match="exists and was not written"):
        check_out_with_record(lone, lone.with_suffix(".json"), "evaluate embedding")
    check_out_with_record(tmp_path / "new.png", tmp_path / "new.json", "evaluate embedding")


def test_embedding_refuses_foreign_files(tmp_path, bccd_dir):
    foreign = tmp_path / "photo.png"
    foreign.write_bytes(b"\x89PNG not ours")
    code, _, stderr = run_cli("evaluate", "embedding", "--data", bccd_dir, "--out", foreign)
    assert code == 2 and "was not written by 'cvat-tools evaluate embedding'" in stderr
    assert foreign.read_bytes() == b"\x89PNG not ours" and not foreign.with_suffix(".json").exists()
    code, _, stderr = run_cli("evaluate", "embedding", "--data", bccd_dir, "--out", tmp_path / "plot.txt")
    assert code == 2 and "give a .png file name" in stderr


def test_embedding_refuses_a_segmenter_bundle(tmp_path, bccd_dir):
    from cvat_tools.bundle import save_classical_segmenter

    seg = save_classical_segmenter(tmp_path / "seg")
    code, _, stderr = run_cli("evaluate", "embedding", "--data", bccd_dir, "--out", tmp_path / "p.png",
                              "--bundle", seg)
    assert code == 2 and "has no classifier head" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "p.png").exists()
