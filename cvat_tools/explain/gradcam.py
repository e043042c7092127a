"""Grad-CAM: which part of a cell crop drove a model's answer.

Grad-CAM (Selvaraju et al. 2017) weighs each channel of the last conv block's feature map A by
the spatial mean of d(logit of the answer)/dA and keeps the positive part of the weighted sum;
Grad-CAM++ (Chattopadhay et al. 2018) weighs each location's positive gradient instead, which
separates several small pieces of evidence (granules) better. The map is upsampled to the crop.

Cheap on a CPU: the network runs forward once per batch; the feature map is cut from the graph
(a leaf that needs a gradient), so the backward pass only crosses the pooling and the head, not
the backbone. Samples are independent in eval mode, so one backward pass of the summed answers
gives every cell's own gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BundleError

METHODS = ("gradcam", "gradcam++")


def network_body(net: nn.Module) -> nn.Module:
    """The timm EfficientNet inside a bundle's network (the refiner's DANN keeps it in
    ``.features``), refusing a network without a conv head to explain."""
    body = net.features if isinstance(getattr(net, "features", None), nn.Module) else net
    if not (hasattr(body, "conv_head") and hasattr(body, "bn2") and hasattr(body, "global_pool")):
        raise BundleError(
            f"{type(net).__name__}: not an EfficientNet classifier (no conv head before the "
            "pooling); Grad-CAM and the embedding need a classifier or refiner bundle")
    return body


def last_conv_block(net: nn.Module) -> nn.Module:
    """The module whose output is the last feature map before the global pooling (the conv
    head's activation; a folded BatchNorm leaves its activation there)."""
    return network_body(net).bn2


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor,
             choose: Callable[[torch.Tensor], torch.Tensor] | None = None,
             method: str = "gradcam") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits N x C, maps N x h x w >= 0 at ``layer``'s resolution) for the classes that
    ``choose(logits)`` picks (default: each row's arg-max)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    captured: dict[str, torch.Tensor] = {}

    def cut(_module, _inputs, output):
        captured["a"] = output.detach().requires_grad_(True)
        return captured["a"]

    handle = layer.register_forward_hook(cut)
    try:
        with torch.enable_grad():
            logits = model(x)
            if "a" not in captured:
                raise BundleError(f"{type(model).__name__}: the hooked layer never ran")
            target = logits.argmax(1) if choose is None else choose(logits).to(logits.device)
            (grads,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), captured["a"])
    finally:
        handle.remove()
    a, g = captured["a"].detach().float(), grads.float()
    if method == "gradcam++":
        g2 = g * g
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    else:
        weights = g.mean(dim=(2, 3), keepdim=True)
    return logits.detach(), F.relu((weights * a).sum(dim=1))


def upsample(maps: torch.Tensor, size: int) -> np.ndarray:
    """N x h x w maps -> N x size x size float32, each scaled to max 1 (all-zero stays zero)."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                       align_corners=False)[:, 0].clamp_(min=0)
    peak = up.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return (up / peak).cpu().numpy().astype(np.float32)


@dataclass
class CellExplanation:
    """One model's answer on one crop and the heat map behind it (size x size, in [0, 1])."""

    prediction: object  # classify.classifier.Prediction
    heat: np.ndarray


class Explainer:
    """Grad-CAM over a loaded classifier or refiner (classify.classifier._BundleModel): the
    same preprocessing and decision prior as its ``predict``, so the explained class is the
    answer the pipeline gives."""

    def __init__(self, model, method: str = "gradcam"):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        self.model = model
        self.method = method
        self.layer = last_conv_block(model.model)
        # an inference copy: no weight needs a gradient, so the forward pass records no graph
        # before the hooked layer
        for p in model.model.parameters():
            p.requires_grad_(False)

    def explain(self, crops: list[np.ndarray], batch_size: int = 32) -> list[CellExplanation]:
        from ..classify.classifier import prepare

        m = self.model
        out: list[CellExplanation] = []
        for start in range(0, len(crops), batch_size):
            batch = prepare(crops[start:start + batch_size], m.input_size, m.stain)
            answers: list = []

            def choose(logits: torch.Tensor) -> torch.Tensor:
                answers.extend(m.predictions(logits))
                return torch.tensor([m.labels.index(p.label) for p in answers])

            _, maps = grad_cam(m.model, self.layer, m.tensor(batch), choose, self.method)
            out.extend(CellExplanation(p, h) for p, h in zip(answers, upsample(maps, m.input_size)))
        return out


def mass_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the map's mass inside ``mask`` (same shape); 0 for an all-zero map."""
    total = float(np.asarray(heat, dtype=np.float64).sum())
    return float(np.asarray(heat, dtype=np.float64)[np.asarray(mask, bool)].sum() / total) if total > 0 else 0.0
