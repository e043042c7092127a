"""Mask R-CNN for WBC instances: torchvision's MaskRCNN over an EfficientNet-Lite + FPN.

Sized for CPU and for a small bundle (<= 40 MB fp16): FPN and mask head at 128 channels, a
256-wide box head instead of torchvision's 1024. One foreground class, "wbc": finding and
outlining cells is this model's job, naming them is the classifier's.

Any image size and magnification: each image's cell size is estimated (cvat_tools/scale.py)
and the image resampled so its WBCs have the size the model was trained on, in overlapping
tiles when it is then larger than the working size (segment/tiling.py); each cell's mask
probabilities are cut to its box and resized to full resolution on their own, so a 12 MP
photograph never needs one full-size array per cell.
"""
from __future__ import annotations

import math
import warnings
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
from .base import Detection, check_image
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
        from ..models.backbones import create_backbone

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
    from ..models.backbones import MEAN, STD

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
    """A trained Mask R-CNN as a :class:`~cvat_tools.segment.base.Segmenter`.

    ``scale``: "auto" measures each image (cvat_tools/scale.py) and resamples it so its WBCs
    have the trained size, tiling when the result is larger than the working size; "fixed"
    is the old rule (long side -> ``long_side``, right only for BCCD-like fields).
    ``cell_size`` (WBC diameter, input px) or ``um_per_px`` override the estimate.
    """

    name = "maskrcnn"

    def __init__(self, model: MaskRCNN, long_side: int = 384, device: str = "cpu", mask_threshold: float = 0.5,
                 balance: bool = False, scale: str = "auto", cell_size: float | None = None,
                 um_per_px: float | None = None, wbc_px: float | None = None):
        self.model = model.eval().to(device)
        # WBC diameter (working px) the model was trained on: the bundle's architecture
        # "wbc_px" when it records one, else BCCD's at this long side (cvat_tools/scale.py).
        self.wbc_px = float(wbc_px) if wbc_px else None
        self.balance = balance
        self.long_side = int(long_side)
        self.device = device
        self.mask_threshold = mask_threshold
        self.last_scale = None  # the Scale of the latest segment() call (predict.json records it)
        self.last_tiles: dict = {}  # tiles run / planned, candidates screened (benchmarks report it)
        self.set_scale(scale, cell_size, um_per_px)

    def set_scale(self, scale: str = "auto", cell_size: float | None = None,
                  um_per_px: float | None = None) -> None:
        from ..scale import check_cell_size

        if scale not in ("auto", "fixed"):
            raise ValueError(f"scale must be 'auto' or 'fixed', got {scale!r}")
        check_cell_size(cell_size, um_per_px)
        self.scale_mode, self.cell_size, self.um_per_px = scale, cell_size, um_per_px

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", **scale: Any) -> "MaskRCNNSegmenter":
        from ..bundle import load_bundle, load_weights_into

        bundle = load_bundle(path, kind="segmenter", labels=LABELS)
        arch = bundle.architecture
        model = load_weights_into(build_model(arch, pretrained=False), bundle)
        return cls(model, long_side=int(arch.get("long_side", 384)), device=device,
                   balance=bool(arch.get("balance", False)), wbc_px=arch.get("wbc_px"), **scale)

    def estimate_scale(self, image: np.ndarray):
        """The :class:`~cvat_tools.scale.Scale` this segmenter applies to ``image``."""
        from ..scale import Scale, estimate_scale, field_default_factor, is_grayscale

        if self.scale_mode == "fixed" and self.cell_size is None and self.um_per_px is None:
            h, w = image.shape[:2]
            return Scale(field_default_factor(h, w, self.long_side), None, "fixed",
                         grayscale=is_grayscale(image))
        return estimate_scale(image, self.long_side, self.cell_size, self.um_per_px, self.wbc_px)

    @torch.inference_mode()
    def _detect(self, work: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, scores, mask probabilities of one working-size RGB tile."""
        work = work if work.flags.writeable and work.flags.c_contiguous else np.array(work)
        # More proposals and detections on tiles larger than the trained field, so a wide
        # tile full of cells keeps them all (100 / 60 on a 384x288 field, as trained).
        area = work.shape[0] * work.shape[1] / (self.long_side * self.long_side * 0.75)
        rpn, heads = self.model.rpn, self.model.roi_heads
        rpn._post_nms_top_n["testing"] = int(min(1000, max(100, 100 * area)))
        heads.detections_per_img = int(min(600, max(60, 60 * area)))
        x = torch.from_numpy(work).permute(2, 0, 1).float().div_(255).to(self.device)
        out = self.model([x])[0]
        return (out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(),
                out["masks"][:, 0].cpu().numpy())

    def segment(self, image: np.ndarray, threshold: float = 0.5) -> list[Detection]:
        from ..scale import canonical_wbc_px
        from .prescreen import MIN_WBC_SHARE, keep_nucleated, plausible_size
        from .tiling import TILE, segment_resampled

        image = check_image(image)
        scale = self.estimate_scale(image)
        self.last_scale = scale
        if scale.empty:  # nothing to miss: no grayscale warning either
            return []
        if scale.grayscale:
            warnings.warn(GRAYSCALE_WARNING, GrayscaleWarning, stacklevel=2)
        fixed = scale.method == "fixed"
        side = self.long_side
        wbc = self.wbc_px or canonical_wbc_px(side)
        self.last_tiles = {}
        found = segment_resampled(
            self._detect, image, scale.factor, threshold, self.mask_threshold,
            overlap=math.ceil(1.5 * wbc), tile=max(TILE, 2 * side, math.ceil(4 * wbc)),
            prepare=balance_background if self.balance else None,
            # the trained field (long side x 3/4) is the smallest canvas the model sees
            min_canvas=(0, 0) if fixed else (side, round(side * 0.75)),
            # no stain colour, no nucleus evidence: a grey image runs every tile
            screen=None if scale.grayscale else _screen(image, wbc / scale.factor),
            stats=self.last_tiles,
        )
        if fixed:
            return found
        # A WBC is not much smaller than the trained size and has a nucleus denser than the
        # red cells around it (segment/prescreen.py); a grey image has no stain colour.
        found = plausible_size(found, MIN_WBC_SHARE * wbc / scale.factor, *image.shape[:2])
        return found if scale.grayscale else keep_nucleated(image, found)


def _screen(image: np.ndarray, cell_px: float):
    """The tiler's pre-screen: nucleus blob boxes of ``image`` (WBCs ``cell_px`` across)."""
    from .prescreen import nucleus_blobs

    return lambda: [(b.x0, b.y0, b.x1, b.y1) for b in nucleus_blobs(image, cell_px)]


GRAYSCALE_WARNING = ("grayscale image (R = G = B): the segmenter was trained on stained colour "
                     "smears; cells may be missed (best effort)")


class GrayscaleWarning(UserWarning):
    """The input has no colour: a best-effort result, never a silent empty one."""
