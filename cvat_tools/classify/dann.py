"""The cross-lab refiner: a domain-adversarial network (DANN, Ganin & Lempitsky 2015).

    crop -> EfficientNet-Lite features -> label head   (trained on labelled PBC crops)
                                       -> GradientReversal(lambda) -> domain discriminator
                                          (PBC vs other labs' unlabelled crops)

The reversed gradient pushes the features to carry no clue of which lab a crop came from,
while the label head keeps them useful for the cell class. lambda follows Ganin-Lempitsky's
schedule 2 / (1 + exp(-10 p)) - 1 over training progress p in [0, 1], so the still-random
discriminator does not disturb the features early on.

With ``conditional`` (CDAN, Long et al. 2018) the discriminator sees the outer product of the
features and the (detached) class probabilities instead of the features alone, so it aligns
each class's features across labs rather than the two labs' overall feature clouds (which can
line up with one lab's eosinophils on the other's basophils).

The refiner's labels are labels.SHARED_CLASSES (no band, no blast: the rule keeps the
classifier's answer for those). :class:`Refiner` loads a bundle of kind "refiner" and predicts
like :class:`~cvat_tools.classify.classifier.CellClassifier`.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from ..bundle import load_bundle
from ..errors import BundleError
from ..models.backbones import create_backbone
from .classifier import _BundleModel, _resolve


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -lambda."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambda_ * grad, None


def grad_reverse(x: torch.Tensor, lambda_: float) -> torch.Tensor:
    return GradientReversal.apply(x, lambda_)


def grl_lambda(progress: float, gamma: float = 10.0) -> float:
    """Ganin-Lempitsky schedule: 0 at the start, -> 1 at the end of training."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DANN(nn.Module):
    """Feature extractor (EfficientNet-Lite, pooled), label head, domain discriminator."""

    def __init__(self, num_classes: int, backbone: str = "efficientnet_lite0", pretrained: bool = True,
                 hidden: int = 256, drop_rate: float = 0.2, conditional: bool = False):
        super().__init__()
        self.features = create_backbone(backbone, pretrained=pretrained, num_classes=0)
        dim = self.features.num_features
        self.conditional = conditional
        self.label_head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(dim, num_classes))
        self.domain_head = nn.Sequential(
            nn.Linear(dim * num_classes if conditional else dim, hidden), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, lambda_: float | None = None):
        """Class logits; with ``lambda_`` also the domain logits behind the gradient reversal."""
        f = self.features(x)
        logits = self.label_head(f)
        if lambda_ is None:
            return logits
        if self.conditional:  # CDAN's multilinear map: features x class probabilities
            g = torch.softmax(logits, dim=1).detach()
            f = torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)
        return logits, self.domain_head(grad_reverse(f, lambda_)).squeeze(1)

    def init_from_classifier(self, state_dict: dict, labels: list[str], own_labels: list[str]) -> None:
        """Start from a trained classifier: its body, and its head rows for our labels."""
        body = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        missing, unexpected = self.features.load_state_dict(body, strict=False)
        if unexpected or [k for k in missing if not k.startswith("classifier.")]:
            raise BundleError("the classifier's backbone does not fit the refiner's (different --backbone?)")
        rows = [labels.index(lab) for lab in own_labels]
        with torch.no_grad():
            self.label_head[1].weight.copy_(state_dict["classifier.weight"][rows])
            self.label_head[1].bias.copy_(state_dict["classifier.bias"][rows])


class Refiner(_BundleModel):
    """Wraps a bundle of kind "refiner" (a DANN); predicts over its (shared) labels."""

    kind = "refiner"

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @classmethod
    def from_bundle(cls, path=None, device: str = "cpu", classifier_labels=None) -> "Refiner":
        path = _resolve(path, "refiner")
        bundle = load_bundle(Path(path), kind="refiner")
        if classifier_labels is not None:
            unknown = [lab for lab in bundle.labels if lab not in list(classifier_labels)]
            if unknown:
                raise BundleError(
                    f"{bundle.path}: refiner labels {unknown} are not in the classifier's label set "
                    f"{list(classifier_labels)}; use a refiner trained for this classifier"
                )
        return cls.from_network(cls.network(bundle), bundle, device)

    @classmethod
    def build(cls, bundle) -> DANN:
        arch = bundle.architecture  # "model": DANN, or CDAN (--conditional)
        return DANN(len(bundle.labels), arch.get("backbone", "efficientnet_lite0"), pretrained=False,
                    hidden=arch.get("domain_hidden", 256), conditional=arch.get("model") == "CDAN")
