"""DANN pieces: gradient reversal, lambda schedule, the thesis rule, bundle label checks."""
from __future__ import annotations

import math

import pytest
import torch

from cvat_tools import labels as L
from cvat_tools.bundle import save_bundle
from cvat_tools.classify.dann import DANN, Refiner, grad_reverse, grl_lambda
from cvat_tools.classify.rule import combine
from cvat_tools.errors import BundleError
from cvat_tools.models.protocols import Prediction


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_gradient_reversal_flips_and_scales(lam):
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    (grad_reverse(x, lam) * w).sum().backward()
    assert torch.allclose(x.grad, -lam * w)
    y = grad_reverse(x.detach(), lam)
    assert torch.equal(y, x.detach())  # identity forward


def test_lambda_schedule_ganin_lempitsky():
    assert grl_lambda(0.0) == 0.0
    assert grl_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    values = [grl_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] > 0.999
    assert grl_lambda(2.0) == grl_lambda(1.0)  # clipped


def test_dann_domain_gradient_is_reversed_into_features():
    torch.manual_seed(0)
    model = DANN(len(L.SHARED_CLASSES), pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    # domain loss only: gradient reaching the features with lambda=1 is minus the one with GRL off
    grads = []
    for lam in (1.0, -1.0):  # -1 = a plain (not reversed) gradient
        model.zero_grad()
        _, dom = model(x, lam)
        dom.sum().backward()
        grads.append(model.features.conv_stem.weight.grad.clone())
    assert torch.allclose(grads[0], -grads[1], atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_cdan_discriminator_sees_features_times_class_probabilities():
    torch.manual_seed(0)
    k = len(L.SHARED_CLASSES)
    model = DANN(k, pretrained=False, conditional=True).eval()
    assert model.domain_head[0].in_features == model.features.num_features * k
    x = torch.randn(2, 3, 32, 32)
    logits, dom = model(x, 1.0)
    assert logits.shape == (2, k) and dom.shape == (2,)
    # the multilinear map by hand gives the same domain logits
    f = model.features(x)
    g = torch.softmax(model.label_head(f), 1)
    joint = (g[:, :, None] * f[:, None, :]).flatten(1)
    assert torch.allclose(model.domain_head(joint).squeeze(1), dom, atol=1e-5)
    grads = []
    for lam in (1.0, -1.0):  # still reversed into the features
        model.zero_grad()
        model(x, lam)[1].sum().backward()
        grads.append(model.features.conv_stem.weight.grad.clone())
    assert torch.allclose(grads[0], -grads[1], atol=1e-6) and grads[0].abs().sum() > 0
    assert model.label_head[1].weight.grad is None  # the class probabilities are detached


def _pred(label, score, labels):
    rest = (1 - score) / (len(labels) - 1)
    return Prediction(label, score, {lab: (score if lab == label else rest) for lab in labels})


FINE = list(L.PBC_FINE_CLASSES) + ["blast cell"]
SHARED = list(L.SHARED_CLASSES)


@pytest.mark.parametrize("final", ["band cell", "blast cell"])
def test_rule_blast_and_band_keep_classifier(final):
    d = combine(_pred(final, 0.6, FINE), _pred("neutrophil", 0.99, SHARED))
    assert (d.label, d.score) == (final, 0.6)
    assert d.refiner_label == "neutrophil" and not d.agree


def test_rule_shared_class_takes_refiner():
    d = combine(_pred("monocyte", 0.8, FINE), _pred("lymphocyte", 0.7, SHARED))
    assert (d.label, d.score) == ("lymphocyte", 0.7)
    assert (d.classifier_label, d.refiner_label, d.agree) == ("monocyte", "lymphocyte", False)


def test_rule_refiner_final_for_classes_it_does_not_know():
    # the thesis rule: anything but blast/band goes to the refiner
    d = combine(_pred("platelet", 0.9, FINE), _pred("lymphocyte", 0.6, SHARED))
    assert (d.label, d.classifier_label, d.agree) == ("lymphocyte", "platelet", False)


def test_rule_conservative_variant_needs_confident_refiner():
    c = _pred("platelet", 0.9, FINE)
    assert combine(c, _pred("lymphocyte", 0.6, SHARED), refiner_confident=0.9).label == "platelet"
    assert combine(c, _pred("lymphocyte", 0.95, SHARED), refiner_confident=0.9).label == "lymphocyte"


def test_rule_without_refiner_and_configurable():
    d = combine(_pred("eosinophil", 0.8, FINE), None)
    assert (d.label, d.refiner_label, d.agree) == ("eosinophil", None, True)
    d = combine(_pred("band cell", 0.8, FINE), _pred("neutrophil", 0.9, SHARED), classifier_final=())
    assert d.label == "neutrophil"


def test_refiner_bundle_with_foreign_labels_refused(tmp_path):
    labels = SHARED + ["blast cell"]
    model = DANN(len(labels), pretrained=False)
    save_bundle(tmp_path / "ref", "refiner", model.state_dict(), labels,
                architecture={"backbone": "efficientnet_lite0"}, input_size=32)
    with pytest.raises(BundleError, match="blast cell"):
        Refiner.from_bundle(tmp_path / "ref", classifier_labels=list(L.PBC_FINE_CLASSES))
    ok = Refiner.from_bundle(tmp_path / "ref", classifier_labels=labels)
    assert ok.labels == labels
    with pytest.raises(BundleError, match="classifier bundle"):
        from cvat_tools.classify.classifier import CellClassifier
        CellClassifier.from_bundle(tmp_path / "ref")


def test_decision_prior_is_bayes_over_a_class_balanced_model():
    import numpy as np

    from cvat_tools.classify.stain import StainNormalizer
    from cvat_tools.errors import InputError

    class Even(torch.nn.Module):  # a model that cannot tell the classes apart
        def forward(self, x):
            return torch.zeros(x.shape[0], len(L.SHARED_CLASSES))

    labels = list(L.SHARED_CLASSES)
    manifest = {"decision_prior": {"name": "peripheral-blood"}}
    ref = Refiner(Even(), labels, 32, StainNormalizer("none"), manifest=manifest)
    crop = np.full((40, 40, 3), 128, np.uint8)
    # an undecided cell is named by the prior alone: the most common white cell
    p = ref.predict([crop])[0]
    expected = L.prior_weights("peripheral-blood", labels)
    assert p.label == "neutrophil"
    assert all(abs(p.probs[lab] - expected[lab]) < 1e-5 for lab in labels)
    ref.set_prior("none")  # back to the training prior: every class equally likely
    assert all(abs(v - 1 / len(labels)) < 1e-6 for v in ref.predict([crop])[0].probs.values())
    with pytest.raises(InputError, match="unknown prior"):
        ref.set_prior("leukaemia")
    # a model without a prior in its manifest decides as trained
    assert Refiner(Even(), labels, 32, StainNormalizer("none")).prior_name == "none"


def test_the_bundles_own_prior_numbers_are_used():
    import numpy as np

    from cvat_tools.classify.stain import StainNormalizer

    class Even(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2)

    labels = ["lymphocyte", "neutrophil"]
    # a bundle written with other prior values than labels.py's today keeps deciding with its own
    manifest = {"decision_prior": {"name": "peripheral-blood", "weights": {"lymphocyte": 0.9, "neutrophil": 0.1}}}
    ref = Refiner(Even(), labels, 32, StainNormalizer("none"), manifest=manifest)
    p = ref.predict([np.full((40, 40, 3), 128, np.uint8)])[0]
    assert p.label == "lymphocyte" and abs(p.probs["lymphocyte"] - 0.9) < 1e-5
    bad = {"decision_prior": {"name": "peripheral-blood", "weights": {"lymphocyte": 1.0}}}
    with pytest.raises(BundleError, match="does not match"):
        Refiner(Even(), labels, 32, StainNormalizer("none"), manifest=bad)
