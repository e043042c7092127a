"""Train the Mask R-CNN segmenter, top to bottom like torchvision's references/detection.

    config -> data (COCO export or BCCD folder) -> model (ImageNet backbone) ->
    heads-only epochs (backbone frozen) -> whole-network epochs (SGD, warm-up, cosine) ->
    per-epoch checkpoint + validation (mask AP on a held-out split) -> best epoch as bundle.

Runs as a plain process or under ``torchrun`` (DDP: gloo on CPU, nccl on GPU), chosen by the
environment variables torchrun sets. The run folder, checkpoints, --resume, schedule and
history are the engine's (train/engine.py); this module holds the data and the step.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..bundle import save_bundle
from ..data.fields import SegSample, pbc_platelet_samples, pbc_pseudo_samples, read_samples
from ..metrics.segmentation import SegmentationScores
from ..segment.maskrcnn import DEFAULT_ARCHITECTURE, LABELS, MaskRCNNSegmenter, build_model
from .engine import Schedule, fit, load_best, restore, start_run, started_from, training_record, unwrap, wrap
from .segmentation_data import InstanceDataset, collate, val_negatives


@dataclass
class SegTrainConfig:
    data: str
    out: str
    split: str | None = None            # BCCD folder: which split to train on
    val: str | None = None              # folder for model selection (default: data's 'val')
    val_split: str | None = None
    backbone: str = "efficientnet_lite0"
    architecture: str = "maskrcnn"
    long_side: int = 384
    balance: bool = True                # white-balance the slide background (train and inference)
    epochs: int = 8                     # training/segmenter_base.yaml, the base recipe
    head_epochs: int = 1                # backbone frozen for the first epochs (thesis)
    batch_size: int = 2
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    pseudo_labels: str | None = None    # PBC folder: add its train-split WBCs with classical masks
    mosaics: int = 0                    # 2x2 pseudo-label mosaics added to each epoch
    scale_range: tuple[float, float] = (0.75, 1.33)  # scale jitter around the canonical field size
    zoom_prob: float = 0.0              # share of training fields zoomed by zoom_range instead
    zoom_range: tuple[float, float] = (0.25, 4.0)    # log-uniform zoom of the canonical size
    zoomed_cells: int = 0               # pseudo-labelled single cells zoomed to fill the frame, per epoch
    negatives: int = 0                  # hard negatives (no WBC) per epoch
    gray: float = 0.0                   # probability of a grey copy of a training item
    val_negatives: int = 0              # no-WBC images cut from the val fields for model selection
    negative_weight: float = 1.0        # selection score: AP + Dice - weight * share of val negatives with a WBC
    init: str | None = None             # bundle to fine-tune from (same architecture)
    max_train_images: int | None = None
    max_val_images: int | None = None
    seed: int = 0
    threads: int = 1
    resume: bool = False
    pretrained: bool = True
    device: str = "cpu"
    checkpoint_dir: str | None = None   # default: <out>.ckpt beside the bundle
    recipe: str | None = None           # the --config file these values came from (recorded)


# ---------------------------------------------------------------------------------------------
# evaluation on held-out images


@torch.inference_mode()
def evaluate_model(model, samples: list[SegSample], long_side: int, device: str = "cpu",
                   balance: bool = False) -> dict[str, float]:
    from ..imaging import load_image

    segmenter = MaskRCNNSegmenter(unwrap(model), long_side=long_side, device=device, balance=balance)
    scores = SegmentationScores()
    for sample in samples:
        image = load_image(sample.image)
        h, w = image.shape[:2]
        dets = segmenter.segment(image, threshold=0.05)
        scores.add([d.full_mask(h, w) for d in dets], [d.score for d in dets], sample.load_masks())
    unwrap(model).train()
    return scores.summary()


@torch.inference_mode()
def count_false_cells(model, images: list[np.ndarray], long_side: int, device: str = "cpu",
                      balance: bool = False, threshold: float = 0.5) -> dict[str, float]:
    """WBCs found (score >= ``threshold``) on images that hold none."""
    segmenter = MaskRCNNSegmenter(unwrap(model), long_side=long_side, device=device, balance=balance)
    counts = [len(segmenter.segment(image, threshold=threshold)) for image in images]
    unwrap(model).train()
    return {"images": len(images), "wbcs": int(sum(counts)),
            "share_with_wbc": float(np.mean([c > 0 for c in counts])) if counts else 0.0}


def load_init(model, path: str, arch: dict[str, Any]) -> str:
    """Start from a bundle's weights (fine-tuning); its architecture must be this one.
    Returns the bundle's weight checksum (recorded in the new manifest)."""
    from ..bundle import load_bundle
    from ..errors import InputError

    bundle = load_bundle(path, kind="segmenter", labels=LABELS)
    theirs = {k: bundle.architecture.get(k) for k in ("name", "backbone", "fpn_channels", "box_head", "mask_head")}
    ours = {k: arch.get(k) for k in theirs}
    if theirs != ours:
        raise InputError(f"--init {path}: architecture {theirs} differs from this recipe's {ours}")
    unwrap(model).load_state_dict(bundle.state_dict)
    return bundle.manifest["weights"]["sha256"]


# ---------------------------------------------------------------------------------------------
# the loop


def _set_backbone_trainable(model, trainable: bool) -> None:
    body = getattr(unwrap(model).backbone, "body", None)
    if body is not None:
        for p in body.parameters():
            p.requires_grad_(trainable)


def _data(cfg: SegTrainConfig, rank: int):
    """(training set, validation fields, no-WBC validation images)."""
    train_samples = read_samples(cfg.data, cfg.split)
    if cfg.max_train_images:
        train_samples = train_samples[: cfg.max_train_images]
    val_samples: list[SegSample] = []
    if cfg.val:
        val_samples = read_samples(cfg.val, cfg.val_split)
    if cfg.max_val_images:
        val_samples = val_samples[: cfg.max_val_images]
    pool: list[SegSample] = []
    if cfg.pseudo_labels and cfg.mosaics > 0:
        pool = pbc_pseudo_samples(cfg.pseudo_labels, seed=cfg.seed)
        if rank == 0:
            print(f"pseudo-labels: {len(pool)} PBC train-split WBC images, {cfg.mosaics} mosaics per epoch")
    platelets: list[SegSample] = []
    if cfg.pseudo_labels and cfg.negatives > 0:
        platelets = pbc_platelet_samples(cfg.pseudo_labels, seed=cfg.seed)
    if cfg.negatives and rank == 0:
        print(f"hard negatives: {cfg.negatives} per epoch ({len(platelets)} PBC train-split platelet images)")
    train_set = InstanceDataset(train_samples, cfg.long_side, train=True, seed=cfg.seed + rank, balance=cfg.balance,
                                mosaic_pool=pool, mosaics=cfg.mosaics, scale_range=tuple(cfg.scale_range),
                                zoom_prob=cfg.zoom_prob, zoom_range=tuple(cfg.zoom_range),
                                zoomed_cells=cfg.zoomed_cells if cfg.pseudo_labels else 0,
                                negatives=cfg.negatives, platelet_pool=platelets, gray=cfg.gray)
    val_neg = val_negatives(val_samples, cfg.long_side, cfg.val_negatives, seed=cfg.seed) if cfg.val_negatives else []
    return train_set, val_samples, val_neg


def _step(model, optimizer, params, images, targets, device: str, step: int) -> dict:
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    losses = model(images, targets)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at iteration {step}; lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 10.0)
    optimizer.step()
    return losses


def train_segmenter(cfg: SegTrainConfig) -> Path:
    """Train and write the best epoch's bundle to ``cfg.out``; returns its path."""
    from ..devices import validate_device

    run = start_run("train segmenter", cfg.out, cfg.resume, inputs=[cfg.data, cfg.val, cfg.pseudo_labels],
                    device=validate_device(cfg.device), folder=cfg.checkpoint_dir)
    cfg.device = run.device
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed + run.rank)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed + run.rank)
    train_set, val_samples, val_neg = _data(cfg, run.rank)
    sampler = None
    if run.world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None,
                                         sampler=sampler, collate_fn=collate, num_workers=0)

    arch = {**DEFAULT_ARCHITECTURE, "name": cfg.architecture, "backbone": cfg.backbone,
            "long_side": cfg.long_side, "balance": cfg.balance}
    model = build_model(arch, pretrained=cfg.pretrained and not cfg.init)
    if cfg.init:
        load_init(model, cfg.init, arch)
        if run.main:
            print(f"initialized from {cfg.init}")
    model = wrap(model.to(cfg.device), run, find_unused_parameters=True)
    params = [p for p in model.parameters()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = Schedule(optimizer, cfg.epochs * len(loader), cfg.warmup_iters, start=0.001)
    meta = {"architecture": arch}
    progress = restore(run, model, optimizer, meta)

    def train_epoch(epoch: int) -> dict:
        if sampler is not None:
            sampler.set_epoch(epoch - 1)
        _set_backbone_trainable(model, epoch - 1 >= cfg.head_epochs)
        model.train()
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not run.main, dynamic_ncols=True)
        t0, running = time.time(), {}
        for images, targets in bar:
            lr = schedule.set(progress.step)
            losses = _step(model, optimizer, params, images, targets, cfg.device, progress.step)
            progress.step += 1
            for k, v in losses.items():
                running[k] = 0.9 * running.get(k, v.item()) + 0.1 * v.item()
            bar.set_postfix(loss=f"{sum(running.values()):.3f}", mask=f"{running['loss_mask']:.3f}", lr=f"{lr:.4f}")
        return {"seconds": round(time.time() - t0, 1), "losses": {k: round(v, 4) for k, v in running.items()}}

    def evaluate(epoch: int):
        if not val_samples:
            return float(epoch), {}  # no validation: keep the last epoch
        fields = {"val": evaluate_model(model, val_samples, cfg.long_side, cfg.device, cfg.balance)}
        score = fields["val"]["mask_AP"] + fields["val"]["mean_dice"]
        if val_neg:
            fields["val_negatives"] = count_false_cells(model, val_neg, cfg.long_side, cfg.device, cfg.balance)
            score -= cfg.negative_weight * fields["val_negatives"]["share_with_wbc"]
        return score, fields

    fit(run, model, optimizer, progress, cfg.epochs, train_epoch, evaluate, meta, select="max_or_equal")
    if run.main:
        load_best(run, model, progress)
        best = progress.best
        save_bundle(
            cfg.out, kind="segmenter", state_dict=unwrap(model).state_dict(), labels=LABELS, architecture=arch,
            input_size=cfg.long_side,
            normalization={"mean": [0.5] * 3, "std": [0.5] * 3, "range": "RGB 0-1"},
            training=training_record(cfg, progress, started_from(cfg.init, "segmenter")),
            metrics={"selected_epoch": best["epoch"], "val": best["metrics"].get("val", {}),
                     **({"val_negatives": best["metrics"]["val_negatives"]} if best["metrics"].get("val_negatives")
                        else {})},
        )
        print(f"wrote {cfg.out} (epoch {best['epoch']} of {cfg.epochs})")
    return Path(cfg.out)
