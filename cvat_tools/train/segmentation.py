"""Train the Mask R-CNN segmenter, top to bottom like torchvision's references/detection.

    config -> data (COCO export or BCCD folder) -> model (ImageNet backbone) ->
    heads-only epochs (backbone frozen) -> whole-network epochs (SGD, warm-up, cosine) ->
    per-epoch checkpoint + validation (mask AP on a held-out split) -> best epoch as bundle.

Runs as a plain process or under ``torchrun`` (DDP: gloo on CPU, nccl on GPU), chosen by the
environment variables torchrun sets. ``resume`` continues from the last checkpoint.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..bundle import save_bundle
from ..data.fields import SegSample, pbc_platelet_samples, pbc_pseudo_samples, read_samples
from ..metrics.segmentation import SegmentationScores
from ..segment.maskrcnn import DEFAULT_ARCHITECTURE, LABELS, MaskRCNNSegmenter, build_model
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
    epochs: int = 12
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
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# distributed (only when torchrun set the variables)


def _dist_setup(device: str) -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------------------------------------
# evaluation on held-out images


@torch.inference_mode()
def evaluate_model(model, samples: list[SegSample], long_side: int, device: str = "cpu",
                   balance: bool = False) -> dict[str, float]:
    from ..imaging import load_image

    segmenter = MaskRCNNSegmenter(_unwrap(model), long_side=long_side, device=device, balance=balance)
    scores = SegmentationScores()
    for sample in samples:
        image = load_image(sample.image)
        h, w = image.shape[:2]
        dets = segmenter.segment(image, threshold=0.05)
        scores.add([d.full_mask(h, w) for d in dets], [d.score for d in dets], sample.load_masks())
    _unwrap(model).train()
    return scores.summary()


@torch.inference_mode()
def count_false_cells(model, images: list[np.ndarray], long_side: int, device: str = "cpu",
                      balance: bool = False, threshold: float = 0.5) -> dict[str, float]:
    """WBCs found (score >= ``threshold``) on images that hold none."""
    segmenter = MaskRCNNSegmenter(_unwrap(model), long_side=long_side, device=device, balance=balance)
    counts = [len(segmenter.segment(image, threshold=threshold)) for image in images]
    _unwrap(model).train()
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
    _unwrap(model).load_state_dict(bundle.state_dict)
    return bundle.manifest["weights"]["sha256"]


# ---------------------------------------------------------------------------------------------
# the loop


def _set_backbone_trainable(model, trainable: bool) -> None:
    body = getattr(_unwrap(model).backbone, "body", None)
    if body is not None:
        for p in body.parameters():
            p.requires_grad_(trainable)


def _lr_at(it: int, total: int, cfg: SegTrainConfig) -> float:
    if it < cfg.warmup_iters:
        return cfg.lr * (0.001 + 0.999 * it / cfg.warmup_iters)
    progress = (it - cfg.warmup_iters) / max(total - cfg.warmup_iters, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_segmenter(cfg: SegTrainConfig) -> Path:
    """Train and write the best epoch's bundle to ``cfg.out``; returns its path."""
    from ..devices import validate_device
    from .checkpoint import load_checkpoint, prepare_run, save_checkpoint

    cfg.device = validate_device(cfg.device)
    ckpt_dir = Path(cfg.checkpoint_dir or f"{cfg.out}.ckpt")
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 alone writes --out and the work folder
        prepare_run(Path(cfg.out), ckpt_dir, "train segmenter", cfg.resume,
                    inputs=[cfg.data, cfg.val, cfg.pseudo_labels])
    torch.set_num_threads(cfg.threads)
    rank, world = _dist_setup(cfg.device)
    random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed + rank)

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

    sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
        collate_fn=collate, num_workers=0,
    )

    arch = {**DEFAULT_ARCHITECTURE, "name": cfg.architecture, "backbone": cfg.backbone,
            "long_side": cfg.long_side, "balance": cfg.balance}
    model = build_model(arch, pretrained=cfg.pretrained and not cfg.init)
    init_sha256 = None
    if cfg.init:
        init_sha256 = load_init(model, cfg.init, arch)
        if rank == 0:
            print(f"initialized from {cfg.init}")
    model = model.to(cfg.device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    params = [p for p in model.parameters()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    last, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    start_epoch, it, best = 0, 0, {"score": -1.0, "epoch": -1, "metrics": {}}
    if cfg.resume:
        state = load_checkpoint(last)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, it, best = state["epoch"] + 1, state["iteration"], state["best"]
        if rank == 0:
            print(f"resumed from {last} at epoch {start_epoch}")

    total = cfg.epochs * len(loader)
    history = list(best.get("history", []))
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        _set_backbone_trainable(model, epoch >= cfg.head_epochs)
        model.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0, dynamic_ncols=True)
        t0, running = time.time(), {}
        for images, targets in bar:
            lr = _lr_at(it, total, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = [im.to(cfg.device) for im in images]
            targets = [{k: v.to(cfg.device) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            it += 1
            for k, v in losses.items():
                running[k] = 0.9 * running.get(k, v.item()) + 0.1 * v.item()
            bar.set_postfix(loss=f"{sum(running.values()):.3f}", mask=f"{running['loss_mask']:.3f}", lr=f"{lr:.4f}")
        if rank == 0:
            record = {"epoch": epoch, "seconds": round(time.time() - t0, 1), "losses": {k: round(v, 4) for k, v in running.items()}}
            if val_samples:
                metrics = evaluate_model(model, val_samples, cfg.long_side, cfg.device, cfg.balance)
                record["val"] = metrics
                score = metrics["mask_AP"] + metrics["mean_dice"]
                if val_neg:
                    record["val_negatives"] = count_false_cells(model, val_neg, cfg.long_side, cfg.device, cfg.balance)
                    score -= cfg.negative_weight * record["val_negatives"]["share_with_wbc"]
            else:
                score = float(epoch)  # no validation: keep the last epoch
            print(f"epoch {epoch + 1}: {record}", flush=True)
            history.append(record)
            if score >= best["score"]:
                best = {"score": score, "epoch": epoch, "metrics": record.get("val", {}),
                        "negatives": record.get("val_negatives")}
                save_checkpoint(best_path, _unwrap(model).state_dict())
            best["history"] = history
            save_checkpoint(last, {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                   "epoch": epoch, "iteration": it, "best": best})
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0:
        state = torch.load(best_path, map_location="cpu", weights_only=True)
        save_bundle(
            cfg.out, kind="segmenter", state_dict=state, labels=LABELS, architecture=arch,
            input_size=cfg.long_side,
            normalization={"mean": [0.5] * 3, "std": [0.5] * 3, "range": "RGB 0-1"},
            training={**{k: v for k, v in asdict(cfg).items() if k not in ("out", "checkpoint_dir")},
                      **({"init_sha256": init_sha256} if cfg.init else {})},
            metrics={"selected_epoch": best["epoch"] + 1, "val": best["metrics"],
                     **({"val_negatives": best["negatives"]} if best.get("negatives") else {}),
                     "history": history},
        )
        print(f"wrote {cfg.out} (epoch {best['epoch'] + 1} of {cfg.epochs})")
    return Path(cfg.out)
