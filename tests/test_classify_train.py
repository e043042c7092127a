"""Training smoke tests: one step of the classifier and of the DANN refiner on tiny data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cvat_tools import labels as L
from cvat_tools.bundle import load_bundle
from cvat_tools.classify.classifier import CellClassifier
from cvat_tools.classify.dann import Refiner
from cvat_tools.errors import InputError
from cvat_tools.train.classification import ClassifierConfig, train_classifier
from cvat_tools.train.refiner import RefinerConfig, train_refiner

from crop_folders import make_crops


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cls")
    root = make_crops(tmp / "crops", per_class=6, classes=L.SHARED_CLASSES + ("band cell",), dup_every=3)
    cfg = ClassifierConfig(out=tmp / "bundle", data=root, epochs=1, size=32, batch_size=4, max_steps=1,
                           threads=2, progress=False, stain="reinhard")
    return root, train_classifier(cfg)


def test_classifier_one_step_writes_a_usable_bundle(tiny_classifier):
    root, path = tiny_classifier
    bundle = load_bundle(path, kind="classifier")
    m = bundle.manifest
    assert m["input_size"] == 32 and m["stain"]["method"] == "reinhard"
    assert set(m["labels"]) == set(L.SHARED_CLASSES) | {"band cell"}
    files = m["split"]["files"]
    test_files = {f for f, _ in files["test"]}
    train_files = {f for f, _ in files["train"]}
    assert test_files and not test_files & train_files
    assert m["training"]["data"]["duplicates_dropped"] == 9 * 2
    assert "macro_f1" in json.dumps(m["metrics"])
    assert (path.parent / (path.name + ".ckpt") / "last.pt").is_file()
    clf = CellClassifier.from_bundle(path)
    crops = [np.full((50, 70, 3), 128, np.uint8), np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8)]
    preds = clf.predict(crops)
    assert len(preds) == 2 and abs(sum(preds[0].probs.values()) - 1) < 1e-4
    assert preds[0].label in clf.labels and preds[0].top(3)[0][0] == preds[0].label


def test_refiner_one_step_from_classifier(tiny_classifier, tmp_path):
    root, clf_path = tiny_classifier
    target = make_crops(tmp_path / "target", per_class=3, classes=("lymphocyte",))
    cfg = RefinerConfig(source=root, targets=[target], out=tmp_path / "ref", classifier=clf_path,
                        epochs=1, batch_size=4, max_steps=1, threads=2, progress=False, low_res=1.0,
                        stain_random=1.0)
    path = train_refiner(cfg)
    ref = Refiner.from_bundle(path, classifier_labels=CellClassifier.from_bundle(clf_path).labels)
    assert ref.labels == list(L.SHARED_CLASSES) and ref.input_size == 32
    assert ref.manifest["training"]["history"][0]["lambda"] == 0.0
    assert ref.manifest["training"]["low_res"] == 1.0
    assert ref.manifest["training"]["stain_random"] == 1.0
    assert ref.manifest["decision_prior"]["name"] == "peripheral-blood" and ref.prior_name == "peripheral-blood"
    assert len(ref.predict([np.full((40, 40, 3), 128, np.uint8)])) == 1


def test_refiner_with_macenko_stores_and_reuses_the_reference(tiny_classifier, tmp_path):
    root, clf_path = tiny_classifier
    target = make_crops(tmp_path / "target", per_class=3, classes=("lymphocyte",))
    cfg = RefinerConfig(source=root, targets=[target], out=tmp_path / "ref", classifier=clf_path,
                        epochs=1, batch_size=4, max_steps=1, threads=2, progress=False, stain="macenko")
    ref = Refiner.from_bundle(train_refiner(cfg))
    entry = ref.manifest["stain"]
    assert entry["method"] == "macenko" and ref.stain.method == "macenko"
    stains = np.asarray(entry["reference_stain_matrix"])
    assert stains.shape == (3, 2) and np.allclose(np.linalg.norm(stains, axis=0), 1, atol=1e-6)
    assert ref.stain.stains == entry["reference_stain_matrix"]
    assert len(ref.predict([np.full((40, 40, 3), 128, np.uint8)])) == 1


def test_refiner_refuses_an_unknown_prior_before_training(tiny_classifier, tmp_path):
    root, clf_path = tiny_classifier
    target = make_crops(tmp_path / "target", per_class=3, classes=("lymphocyte",))
    cfg = RefinerConfig(source=root, targets=[target], out=tmp_path / "ref", classifier=clf_path,
                        epochs=1, max_steps=1, progress=False, prior="leukaemia")
    with pytest.raises(InputError, match="unknown prior"):
        train_refiner(cfg)
    assert not (tmp_path / "ref").exists() and not (tmp_path / "ref.ckpt").exists()


def test_refiner_refuses_target_without_images(tiny_classifier, tmp_path):
    root, clf_path = tiny_classifier
    (tmp_path / "empty").mkdir()
    cfg = RefinerConfig(source=root, targets=[tmp_path / "empty"], out=tmp_path / "ref", classifier=clf_path,
                        epochs=1, max_steps=1, progress=False)
    with pytest.raises(InputError, match="no images"):
        train_refiner(cfg)
    assert not (tmp_path / "ref").exists()


def test_classifier_resume_continues_and_refuses_another_size(tiny_classifier, capsys):
    root, path = tiny_classifier
    base = dict(out=path, data=root, batch_size=4, max_steps=1, threads=2, progress=False, stain="reinhard")
    with pytest.raises(InputError, match="other labels or size"):
        train_classifier(ClassifierConfig(epochs=2, size=48, resume=True, **base))
    train_classifier(ClassifierConfig(epochs=2, size=32, resume=True, **base))
    assert "resumed after epoch 1" in capsys.readouterr().out
    history = load_bundle(path, kind="classifier").manifest["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_classifier_init_fine_tunes_at_another_size_and_refuses_other_labels(tiny_classifier, tmp_path):
    root, path = tiny_classifier
    base = dict(data=root, batch_size=4, max_steps=1, threads=2, progress=False, epochs=1)
    out = train_classifier(ClassifierConfig(out=tmp_path / "big", size=48, init=path, **base))
    bundle = load_bundle(out, kind="classifier")
    assert bundle.manifest["input_size"] == 48 and bundle.manifest["training"]["init"] == str(path)
    first = load_bundle(path, kind="classifier").manifest
    provenance = bundle.manifest["training"]["started_from"]  # the earlier stage stays traceable
    assert provenance["path"] == str(path) and provenance["training"]["size"] == first["input_size"]
    assert provenance["kind"] == "classifier" and provenance["weights_sha256"] == first["weights"]["sha256"]
    assert provenance["training"]["history"] == first["training"]["history"]
    fewer = make_crops(tmp_path / "fewer", per_class=6, classes=L.SHARED_CLASSES)
    with pytest.raises(Exception, match="label set"):
        train_classifier(ClassifierConfig(out=tmp_path / "other", size=32, init=path,
                                          **{**base, "data": fewer}))
    assert not (tmp_path / "other").exists()


def test_source_draws_give_the_few_labelled_target_crops_their_share():
    from cvat_tools.train.classification import balanced_indices
    from cvat_tools.train.refiner import source_draws

    labels = np.array([0] * 500 + [1] * 100 + [0] * 5)  # class 0: 500 PBC crops + 5 corrections
    few = np.arange(len(labels)) >= 600
    draws = source_draws(labels, few, 20000, 0.3, np.random.default_rng(0))
    per_class = np.bincount(labels[draws]) / len(draws)
    assert abs(per_class[0] - 0.5) < 0.02  # classes still balanced
    share = few[draws][labels[draws] == 0].mean()
    assert abs(share - 0.3) < 0.02  # vs 5/505 = 1% without the share
    # without labelled target crops: exactly the class-balanced sampler
    none = np.zeros(len(labels), bool)
    a = source_draws(labels, none, 100, 0.3, np.random.default_rng(1))
    b = balanced_indices(labels, 100, np.random.default_rng(1))
    assert np.array_equal(a, b)


def test_refiner_one_step_with_a_few_labelled_target_crops(tiny_classifier, tmp_path):
    root, clf_path = tiny_classifier
    target = make_crops(tmp_path / "target", per_class=3, classes=("lymphocyte",))
    few = make_crops(tmp_path / "few", per_class=2, classes=("lymphocyte", "Monocytes", "platelet"))
    cfg = RefinerConfig(source=root, targets=[target], out=tmp_path / "ref", classifier=clf_path,
                        target_labels=few, epochs=1, batch_size=4, max_steps=1, threads=2, progress=False)
    ref = Refiner.from_bundle(train_refiner(cfg))
    data = ref.manifest["training"]["data"]
    assert data["labelled_target_crops"] == 4  # platelets are not a refiner class: left out
    assert ref.manifest["training"]["target_label_share"] == 0.3
    # a folder that names no cell class is refused before training, nothing written
    make_crops(tmp_path / "few", per_class=2, classes=("schistocyte",))
    cfg.out = tmp_path / "ref2"
    with pytest.raises(InputError, match="schistocyte"):
        train_refiner(cfg)
    assert not (tmp_path / "ref2").exists()


def test_im_loss_rewards_confident_prior_shaped_decisions_and_punishes_collapse():
    import math

    import torch

    from cvat_tools.train.refiner import im_loss

    prior = torch.tensor([0.6, 0.3, 0.1])
    log_prior = prior.log()
    n = 100
    truth = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)  # a batch shaped like the prior
    confident = torch.nn.functional.one_hot(truth, 3).float() * 12 - log_prior  # p ~ one-hot after the prior
    collapsed = torch.zeros(n, 3)
    collapsed[:, 0] = 12  # every cell the commonest class
    unsure = -log_prior.expand(n, 3)  # p = uniform after the prior
    good, bad, vague = (float(im_loss(z, log_prior)) for z in (confident, collapsed, unsure))
    assert good < 0.01  # confident and matching the differential: nearly nothing to pay
    assert bad > -math.log(0.6) - 0.01  # confident but all one class pays KL(onehot || prior) = -log 0.6
    assert vague > math.log(3) - 0.01  # unsure: the full entropy
    z = unsure.clone().requires_grad_(True)
    im_loss(z, log_prior).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_refiner_continues_from_a_refiner_with_information_maximization(tiny_classifier, tmp_path):
    root, clf_path = tiny_classifier
    target = make_crops(tmp_path / "target", per_class=3, classes=("lymphocyte", "neutrophil"))
    base = dict(source=root, targets=[target], classifier=clf_path, epochs=1, batch_size=4, max_steps=1,
                threads=2, progress=False)
    first = train_refiner(RefinerConfig(out=tmp_path / "ref", **base))
    second = train_refiner(RefinerConfig(out=tmp_path / "ref_im", init=first, target_im=1.0, **base))
    m = load_bundle(second, kind="refiner").manifest
    record = m["training"]["started_from"]  # the first stage stays traceable
    assert record["path"] == str(first)
    assert record["weights_sha256"] == load_bundle(first).manifest["weights"]["sha256"]
    assert m["training"]["target_im"] == 1.0 and m["training"]["history"][0]["target_im_loss"] > 0
    a = load_bundle(first).state_dict["label_head.1.weight"]
    b = load_bundle(second).state_dict["label_head.1.weight"]
    assert a.shape == b.shape and not np.allclose(a.numpy(), b.numpy())  # it trained on
    # with lr 0 nothing moves: the weights are the first refiner's, not the classifier's rows
    still = train_refiner(RefinerConfig(out=tmp_path / "ref_lr0", init=first, **{**base, "lr": 0.0}))
    assert np.array_equal(load_bundle(still).state_dict["label_head.1.weight"].numpy(), a.numpy())
    # a classifier bundle, or a refiner of another size, is refused before any data is read
    with pytest.raises(Exception, match="refiner bundle is needed"):
        train_refiner(RefinerConfig(out=tmp_path / "bad", init=clf_path, **base))
    with pytest.raises(InputError, match="32 px"):
        train_refiner(RefinerConfig(out=tmp_path / "bad", init=first, size=48, **base))
    assert not (tmp_path / "bad").exists()


def test_fold_batchnorm_same_outputs_fewer_layers():
    import torch
    from torch import nn

    from cvat_tools.classify.classifier import build_classifier
    from cvat_tools.models.backbones import fold_batchnorm

    model = build_classifier("efficientnet_lite0", 5, pretrained=False).eval()
    with torch.no_grad():  # non-trivial statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(3, 3, 160, 160)
    with torch.inference_mode():
        assert torch.allclose(model(x), folded(x), rtol=1e-3, atol=1e-4)
    # a BatchNorm that does not follow a convolution cannot be folded: the model comes back as is
    odd = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)).eval()
    assert fold_batchnorm(odd) is odd


def test_refiner_in_grey_sees_no_colour(tiny_classifier, tmp_path):
    from cvat_tools.classify.stain import grey

    root, clf_path = tiny_classifier
    target = make_crops(tmp_path / "target", per_class=3, classes=("lymphocyte",))
    cfg = RefinerConfig(source=root, targets=[target], out=tmp_path / "ref", classifier=clf_path,
                        epochs=1, batch_size=4, max_steps=1, threads=2, progress=False, stain="grey",
                        stain_random=1.0)
    ref = Refiner.from_bundle(train_refiner(cfg))
    assert ref.manifest["stain"]["method"] == "grey" and ref.stain.method == "grey"
    rng = np.random.default_rng(5)
    crop = rng.integers(0, 255, (40, 40, 3), np.uint8)
    a, b = ref.predict([crop, grey(crop)])
    assert a.probs == pytest.approx(b.probs)  # a crop and its grey version are one input


def test_conditional_refiner_bundle_loads_and_refuses_a_dann_init(tiny_classifier, tmp_path):
    root, clf_path = tiny_classifier
    target = make_crops(tmp_path / "target", per_class=3, classes=("lymphocyte",))
    base = dict(source=root, targets=[target], classifier=clf_path, epochs=1, batch_size=4, max_steps=1,
                threads=2, progress=False)
    cdan = train_refiner(RefinerConfig(out=tmp_path / "cdan", conditional=True, **base))
    ref = Refiner.from_bundle(cdan)
    assert ref.manifest["architecture"]["model"] == "CDAN"
    assert len(ref.predict([np.full((40, 40, 3), 128, np.uint8)])) == 1
    dann = train_refiner(RefinerConfig(out=tmp_path / "dann", **base))
    with pytest.raises(InputError, match="--conditional"):
        train_refiner(RefinerConfig(out=tmp_path / "bad", init=dann, conditional=True, **base))
    with pytest.raises(InputError, match="--conditional"):
        train_refiner(RefinerConfig(out=tmp_path / "bad", init=cdan, **base))
    assert not (tmp_path / "bad").exists()
