"""The cell classifier: masked single-cell crop -> one of the model's labels, with probabilities.

A bundle of kind "classifier" holds an EfficientNet-Lite fine-tuned on masked crops
(crops.cell_crop). Its manifest says the labels, the input size and the stain normalization it
was trained with; :class:`CellClassifier` applies exactly those before the network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..bundle import load_bundle, shipped_bundle
from ..crops import resize_square
from ..errors import BundleError, InputError
from ..models.backbones import MEAN, STD, create_backbone, fold_batchnorm
from ..models.protocols import Prediction
from .stain import StainNormalizer


def build_classifier(backbone: str, num_classes: int, pretrained: bool = True, drop_rate: float = 0.2) -> nn.Module:
    """EfficientNet-Lite with a fresh head of ``num_classes`` (ImageNet-initialized body)."""
    return create_backbone(backbone, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate)


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 N x S x S x 3 -> float N x 3 x S x S scaled as EfficientNet-Lite expects."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def prepare(crops: list[np.ndarray], size: int, stain: StainNormalizer) -> np.ndarray:
    """Resize to size x size (square-padded with the crop grey) and stain-normalize."""
    out = np.empty((len(crops), size, size, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        crop = np.asarray(crop)
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
            raise InputError(f"crop {i}: expected an RGB uint8 H x W x 3 array, got {crop.dtype} {crop.shape}")
        out[i] = stain(resize_square(crop, size))
    return out


class _BundleModel:
    """What the classifier and the refiner share: a bundle, its labels, preprocessing, predict."""

    kind = "classifier"
    labels: list[str]
    input_size: int

    def __init__(self, model: nn.Module, labels: list[str], input_size: int,
                 stain: StainNormalizer, device: str = "cpu", manifest: dict | None = None):
        # channels-last: oneDNN's fast path for EfficientNet's depthwise convolutions on CPU
        # (1.5-1.7x network crops/s at 160 px on 2 cores in an A/B run); harmless on CUDA.
        # BatchNorm folded into the convolutions: the same outputs, ~1.5x crops/s on 2 CPU cores
        self.model = fold_batchnorm(model.eval()).to(device).to(memory_format=torch.channels_last)
        self.labels = list(labels)
        self.input_size = int(input_size)
        self.stain = stain
        self.device = device
        self.manifest = manifest or {}
        entry = self.manifest.get("decision_prior") or {}
        # the bundle's own numbers, so a later change to labels.py cannot move a shipped model
        self.set_prior(entry.get("name", "none"), entry.get("weights"))

    def set_prior(self, name: str, weights: dict[str, float] | None = None) -> None:
        """Decide under prior ``name`` (labels.PRIORS; its values from labels.py unless
        ``weights`` are given): "none" keeps the training (uniform) one."""
        from ..labels import PRIORS, prior_weights

        if name not in PRIORS:
            raise InputError(f"unknown prior {name!r}; choose one of {list(PRIORS)}")
        if weights is None:
            try:
                weights = prior_weights(name, self.labels)
            except ValueError as exc:
                raise InputError(f"{exc} (this model's labels: {self.labels})") from None
        elif sorted(weights) != sorted(self.labels):
            raise BundleError(f"decision prior over {sorted(weights)} does not match the labels {self.labels}")
        self.prior_name = name
        self._prior = None if weights is None else torch.tensor([weights[lab] for lab in self.labels])

    @property
    def decision_prior(self) -> dict:
        """The prior in use, in the manifest's shape: {"name", "weights" (None: uniform)}."""
        weights = None if self._prior is None else {
            lab: round(float(w), 6) for lab, w in zip(self.labels, self._prior)}
        return {"name": self.prior_name, "weights": weights}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.inference_mode()
    def predict(self, crops: list[np.ndarray], batch_size: int = 64) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(crops), batch_size):
            batch = prepare(crops[start:start + batch_size], self.input_size, self.stain)
            out.extend(self.predictions(self.logits(self.tensor(batch))))
        return out

    def tensor(self, batch: np.ndarray) -> torch.Tensor:
        """Prepared uint8 crops (:func:`prepare`) as the network's input on this device."""
        return to_tensor(batch).to(self.device).contiguous(memory_format=torch.channels_last)

    def predictions(self, logits: torch.Tensor) -> list[Prediction]:
        """One :class:`Prediction` per row of ``logits``, under the decision prior."""
        probs = torch.softmax(logits.detach().float(), dim=1).cpu()
        if self._prior is not None:  # Bayes: posterior under the field's prior, renormalized
            probs = probs * self._prior
            probs = probs / probs.sum(dim=1, keepdim=True)
        out = []
        for row in probs.numpy():
            best = int(row.argmax())
            out.append(Prediction(self.labels[best], float(row[best]),
                                  {lab: float(p) for lab, p in zip(self.labels, row)}))
        return out

    @classmethod
    def build(cls, bundle) -> nn.Module:
        """An untrained network of the shape the bundle's architecture records."""
        raise NotImplementedError

    @classmethod
    def network(cls, bundle) -> nn.Module:
        """The bundle's trained network as saved (BatchNorm not folded), refusing weights of
        another shape."""
        from ..bundle import load_weights_into

        return load_weights_into(cls.build(bundle), bundle)

    @classmethod
    def from_network(cls, model: nn.Module, bundle, device: str = "cpu"):
        """Wrap ``model`` (the bundle's network, possibly changed) with the bundle's labels,
        input size, stain normalization and decision prior."""
        stain = StainNormalizer.from_manifest(bundle.manifest.get("stain"))
        return cls(model, bundle.labels, bundle.manifest["input_size"], stain, device, bundle.manifest)


def _resolve(path, kind: str) -> Path:
    if path is None:
        path = shipped_bundle(kind)
        if path is None:
            raise BundleError(
                f"no shipped {kind} bundle in cvat_tools/weights/{kind}; pass --bundle or train one "
                f"with 'cvat-tools train {kind}'"
            )
    return Path(path)


class CellClassifier(_BundleModel):
    """Wraps a bundle of kind "classifier"."""

    @classmethod
    def from_bundle(cls, path=None, device: str = "cpu") -> "CellClassifier":
        bundle = load_bundle(_resolve(path, "classifier"), kind="classifier")
        return cls.from_network(cls.network(bundle), bundle, device)

    @classmethod
    def build(cls, bundle) -> nn.Module:
        return build_classifier(bundle.architecture.get("backbone", "efficientnet_lite0"), len(bundle.labels),
                                pretrained=False)
