"""Mask R-CNN for WBC instances: torchvision's MaskRCNN over an EfficientNet-Lite + FPN.

Sized for CPU and for a small bundle (<= 40 MB fp16): FPN and mask head at 128 channels, a
256-wide box head instead of torchvision's 1024. One foreground class, "wbc": finding and
outlining cells is this model's job, naming them is the classifier's.

Any image size: the field is rescaled so its long side is ``long_side`` (cells then have the
BCCD-like size the model was trained on: a 640x480 BCCD field and a 4032x3024 phone
photograph of a smear both show WBCs ~100-130 px wide at 640), the model runs there, and each
cell's mask probabilities are cut to its box and resized to full resolution on their own, so
a 12 MP photograph never needs one full-size array per cell.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn as nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import BundleError
from .base import Detection, check_image, paste_mask
from .normalize import balance_background

LABELS = ["wbc"]
DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "name": "maskrcnn",
    "backbone": "efficientnet_lite0",
    "fpn_channels": 128,
    "box_head": 256,
    "mask_head": [128, 128],
    "long_side": 384,
    "balance": True,   # white-balance the slide background (segment/normalize.py)
}


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm for FPN and mask head: stable at CPU batch sizes of 1-4 (BatchNorm is not),
    and keeps the heads' initial losses sane on EfficientNet's unnormalized features."""
    return nn.GroupNorm(16, channels)


class EfficientNetFPN(nn.Module):
    """timm EfficientNet-Lite feature maps at strides 4-32, through an FPN (+ max-pool level)."""

    def __init__(self, variant: str, pretrained: bool, out_channels: int):
        super().__init__()
        from ..classify.backbones import create_backbone

        self.body = create_backbone(variant, pretrained=pretrained, features_only=True, out_indices=(1, 2, 3, 4))
        self.fpn = FeaturePyramidNetwork(
            self.body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool(),
            norm_layer=_group_norm,
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class NoResizeTransform(GeneralizedRCNNTransform):
    """Normalize and batch, but keep the size: callers bring images at working size (the
    segmenter rescales, training rescales as an augmentation)."""

    def resize(self, image, target=None):
        return image, target


def _no_resize(model: MaskRCNN) -> MaskRCNN:
    t = model.transform
    model.transform = NoResizeTransform(t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=32)
    return model


def build_model(architecture: dict[str, Any] | None = None, pretrained: bool = True) -> MaskRCNN:
    """The Mask R-CNN described by ``architecture`` (a bundle manifest's field)."""
    arch = {**DEFAULT_ARCHITECTURE, **(architecture or {})}
    long_side = int(arch["long_side"])
    common = dict(
        min_size=long_side, max_size=long_side,   # inputs arrive already at working size
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=64, box_detections_per_img=60,
    )
    if arch["name"] == "resnet50_fpn":
        # For users with their own weights: torchvision's reference model, 2 classes.
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        return _no_resize(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, **common))
    if arch["name"] != "maskrcnn":
        raise BundleError(f"unknown segmenter architecture {arch['name']!r} (maskrcnn, resnet50_fpn)")
    from ..classify.backbones import MEAN, STD

    ch = int(arch["fpn_channels"])
    backbone = EfficientNetFPN(arch["backbone"], pretrained, ch)
    anchors = AnchorGenerator(
        sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5
    )
    box_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2)
    rep = int(arch["box_head"])
    mask_layers = list(arch["mask_head"])
    return _no_resize(MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(ch * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, 2),
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(ch, mask_layers, 1, norm_layer=_group_norm),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], 2),
        image_mean=list(MEAN), image_std=list(STD),
        **common,
    ))


def resize_long_side(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if abs(scale - 1) < 1e-6:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp), scale


class MaskRCNNSegmenter:
    """A trained Mask R-CNN as a :class:`~cvat_tools.segment.base.Segmenter`."""

    name = "maskrcnn"

    def __init__(self, model: MaskRCNN, long_side: int = 384, device: str = "cpu", mask_threshold: float = 0.5,
                 balance: bool = False):
        self.model = model.eval().to(device)
        self.balance = balance
        self.long_side = int(long_side)
        self.device = device
        self.mask_threshold = mask_threshold

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu") -> "MaskRCNNSegmenter":
        from ..bundle import load_bundle, load_weights_into

        bundle = load_bundle(path, kind="segmenter", labels=LABELS)
        arch = bundle.architecture
        model = load_weights_into(build_model(arch, pretrained=False), bundle)
        return cls(model, long_side=int(arch.get("long_side", 384)), device=device,
                   balance=bool(arch.get("balance", False)))

    @torch.inference_mode()
    def segment(self, image: np.ndarray, threshold: float = 0.5) -> list[Detection]:
        image = check_image(image)
        h, w = image.shape[:2]
        work, scale = resize_long_side(image, self.long_side)
        if self.balance:
            work = balance_background(work)
        work = work if work.flags.writeable and work.flags.c_contiguous else np.array(work)
        x = torch.from_numpy(work).permute(2, 0, 1).float().div_(255).to(self.device)
        out = self.model([x])[0]
        keep = out["scores"] >= threshold
        boxes = out["boxes"][keep].cpu().numpy()
        scores = out["scores"][keep].cpu().numpy()
        probs = out["masks"][keep, 0].cpu().numpy()
        dets = []
        for box, score, prob in zip(boxes, scores, probs):
            mask = paste_mask(prob, box, scale, (h, w), self.mask_threshold)
            if mask is not None:
                dets.append(Detection(mask, float(score)))
        return dets
