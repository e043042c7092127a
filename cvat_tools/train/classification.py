"""Train the cell classifier, top to bottom.

    samples  -> checks -> sha1 dedupe -> seeded stratified split (persisted in the bundle)
             -> crop cache (once) -> stain reference from train -> EfficientNet-Lite (ImageNet)
             -> class-balanced sampling + augmentation (train only) -> Adam, cosine LR
             -> val macro-F1 each epoch, checkpoint each epoch (--resume), best-on-val kept
             -> scores on the held-out test split -> fp16 bundle (kind "classifier")

torchrun-ready: with WORLD_SIZE > 1 the model is wrapped in DistributedDataParallel and each
rank draws its own batches; only rank 0 evaluates and writes.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import labels as L
from ..bundle import save_bundle
from ..classify.classifier import build_classifier, to_tensor
from ..classify.stain import StainNormalizer
from ..data import cells as D
from ..errors import InputError
from ..metrics.classification import classification_report
from .augment import augment_batch
from .engine import Run, Schedule, default_warmup, fit, load_best, restore, start_run, started_from, training_record, wrap
from .engine import steps_per_epoch as engine_steps


@dataclass
class ClassifierConfig:
    out: Path
    data: Path | None = None  # CROPS_DIR/<label>/*.png
    pbc: Path | None = None  # the PBC folder (fine labels from file names, centre-cell crops)
    epochs: int = 8
    size: int = 112
    backbone: str = "efficientnet_lite0"
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    stain: str = "none"
    cache: Path | None = None  # .npz crop cache (reused when size and files match)
    resume: bool = False
    init: Path | None = None  # a classifier bundle to start from (same labels; any input size)
    threads: int = 1
    max_steps: int | None = None  # per epoch; for smoke tests
    pretrained: bool = True
    fractions: tuple[float, float, float] = D.DEFAULT_FRACTIONS
    progress: bool = True
    device: str = "cpu"  # "cuda": bf16 autocast; augmentation stays on the CPU (see workers)
    workers: int = 0  # augmentation processes (0: in this process); results do not depend on it
    low_res: float = 0.0  # probability of augment.low_resolution (other cameras)
    stain_random: float = 0.0  # probability of augment.stain_randomization (other labs' stains)
    packed: Path | None = None  # train from a pack (classification_pack) instead of --data/--pbc
    mask: str = "classical"  # PBC crops: classical centre-cell mask, or "segmenter" (Mask R-CNN)
    warmup: int | None = None  # linear warm-up steps before the cosine; None: 5% of the steps, at most 100
    recipe: Path | None = None  # the --config file these values came from (recorded)


@dataclass
class PreparedData:
    root: Path
    labels: list[str]
    split: dict[str, list[D.Sample]]
    crops: dict[str, D.CropCache]
    stain: StainNormalizer
    info: dict = field(default_factory=dict)


# --- data -----------------------------------------------------------------------------------

def prepare_data(cfg: ClassifierConfig) -> PreparedData:
    """Everything that can fail on bad input happens here, before a single training step."""
    if cfg.packed is not None:
        return prepare_packed(cfg)
    if (cfg.data is None) == (cfg.pbc is None):
        raise InputError("pass exactly one of --data CROPS_DIR or --pbc PBC_DIR")
    pbc_mode = cfg.pbc is not None
    root = Path(cfg.pbc if pbc_mode else cfg.data)
    samples = D.pbc_samples(root) if pbc_mode else D.folder_samples(root)
    D.check_samples(samples)
    kept, dropped = D.dedupe(samples)
    D.check_samples(kept)
    split = D.stratified_split(kept, cfg.seed, cfg.fractions)
    order = L.PBC_FINE_CLASSES if pbc_mode else L.ALL_CLASSES
    labels = [lab for lab in order if any(s.label == lab for s in kept)]
    everything = split["train"] + split["val"] + split["test"]
    if not pbc_mode and cfg.mask != "classical":
        raise InputError("--mask picks how PBC images are cut; crops from --data are used as given")
    cache = D.build_cache(everything, cfg.size, pbc_mode, cfg.cache, progress=cfg.progress, mask=cfg.mask)
    crops = {k: cache.subset(str(s.path) for s in v) for k, v in split.items()}
    stain = StainNormalizer.fit(cfg.stain, crops["train"].images)
    if stain.method != "none":
        for part in crops.values():
            part.images = np.stack([stain(c) for c in part.images])
    info = {
        "source": "pbc" if pbc_mode else "crops",
        "root": str(root),
        "images_found": len(samples),
        "duplicates_dropped": len(dropped),
        "crop_mask": cache.info.get("mask"),
        "mask_missed": cache.info.get("mask_missed"),
        "segmenter_fallbacks": cache.info.get("segmenter_fallbacks"),
        "counts": {k: {lab: sum(s.label == lab for s in v) for lab in labels} for k, v in split.items()},
    }
    return PreparedData(root, labels, split, crops, stain, info)


def prepare_packed(cfg: ClassifierConfig) -> PreparedData:
    """The split and crops of a pack made elsewhere (test: file list only, no pixels)."""
    from ..data.pack import read_pack

    if cfg.data is not None or cfg.pbc is not None:
        raise InputError("--packed replaces --data/--pbc; pass only one of them")
    meta, images = read_pack(cfg.packed)
    if int(meta["size"]) != cfg.size:
        raise InputError(f"{cfg.packed}: pack holds {meta['size']}-px crops, this run wants --size {cfg.size}")
    if int(meta["seed"]) != cfg.seed or tuple(meta["fractions"]) != tuple(cfg.fractions):
        raise InputError(f"{cfg.packed}: pack was split with seed {meta['seed']}; pass --seed {meta['seed']}")
    packed_mask = D.mask_source_of(meta["info"].get("crop_mask"))
    if packed_mask != cfg.mask:
        raise InputError(f"{cfg.packed}: pack holds crops cut with the {packed_mask} mask; pass --mask {packed_mask}")
    root = Path(meta["root"])
    split = {k: D.split_from_manifest(meta["files"], root, k) for k in D.SPLITS}
    crops = {k: D.CropCache(images[k], [s.label for s in split[k]], [str(s.path) for s in split[k]],
                            {"pack": str(cfg.packed)}) for k in ("train", "val")}
    size = cfg.size
    crops["test"] = D.CropCache(np.zeros((0, size, size, 3), np.uint8), [], [], {"pack": "test pixels not packed"})
    stain = StainNormalizer.fit(cfg.stain, crops["train"].images)
    if stain.method != "none":
        for part in crops.values():
            if len(part.images):
                part.images = np.stack([stain(c) for c in part.images])
    info = {**meta["info"], "pack": str(cfg.packed), "pack_quality": meta.get("quality")}
    return PreparedData(root, list(meta["labels"]), split, crops, stain, info)


def balanced_indices(targets: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn with replacement so every class is equally likely (weighted sampler)."""
    counts = np.bincount(targets)
    weights = 1.0 / counts[targets]
    return rng.choice(len(targets), size=n, replace=True, p=weights / weights.sum())


# --- model ----------------------------------------------------------------------------------

def batch_tensor(crops: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """uint8 N x S x S x 3 -> the model's input on ``device`` (moved as uint8: 4x fewer bytes)."""
    if device == "cpu":
        return to_tensor(crops)
    x = torch.from_numpy(np.ascontiguousarray(crops)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # == to_tensor: mean 0.5, std 0.5
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_cache(model: nn.Module, images: np.ndarray, batch_size: int = 128, device: str = "cpu") -> np.ndarray:
    """Class probabilities for already-prepared (resized, stain-normalized) crops."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        logits = model(batch_tensor(images[start:start + batch_size], device))
        out.append(torch.softmax(logits.float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def score(model: nn.Module, cache: D.CropCache, labels: list[str], device: str = "cpu") -> dict | None:
    if not len(cache.images):
        return None
    probs = predict_cache(model, cache.images, device=device)
    predicted = [labels[i] for i in probs.argmax(1)]
    fine = classification_report(cache.labels, predicted, labels)
    folded = classification_report([L.FINE_TO_PBC_FOLDER.get(t, t) for t in cache.labels],
                                   [L.FINE_TO_PBC_FOLDER.get(p, p) for p in predicted])
    return {"fine": fine.to_dict(), "pbc_folders": folded.to_dict()}


# --- augmented batches ------------------------------------------------------------------------

_POOL_IMAGES: np.ndarray | None = None  # the train crops, in this process or mapped by a worker


def _start_worker(path: str) -> None:
    global _POOL_IMAGES
    cv2.setNumThreads(1)
    _POOL_IMAGES = np.load(path, mmap_mode="r")


def _augment_step(job) -> np.ndarray:
    idx, seed, low_res, stain_random = job
    return augment_batch(_POOL_IMAGES[idx], np.random.default_rng(seed), low_res, stain_random)


class BatchMaker:
    """Augmented training batches, in this process or in ``workers`` worker processes.

    Each step has its own seed (run seed, epoch, rank, step), so a run gives the same batches
    whatever the number of workers; workers keep a bounded queue of steps ahead (a GPU takes
    batches faster than one CPU core augments them). Workers are fresh processes (forkserver),
    not forks: a fork of a process whose OpenCV/OpenMP thread pools have run can hang. They read
    the crops from a memory-mapped temporary .npy file."""

    def __init__(self, images: np.ndarray, workers: int, low_res: float, stain_random: float):
        global _POOL_IMAGES
        _POOL_IMAGES = images
        self.low_res, self.stain_random = low_res, stain_random
        self.pool, self.tmp = None, None
        if workers > 0:
            import multiprocessing as mp
            import tempfile

            self.tmp = tempfile.mkdtemp(prefix="cvat-tools-crops-")
            path = os.path.join(self.tmp, "train.npy")
            np.save(path, images)
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(workers, initializer=_start_worker, initargs=(path,))
            self.ahead = 2 * workers

    def epoch(self, picks: np.ndarray, batch_size: int, steps: int, seed: tuple):
        jobs = [(picks[i * batch_size:(i + 1) * batch_size], [*seed, i], self.low_res, self.stain_random)
                for i in range(steps)]
        if self.pool is None:
            for job in jobs:
                yield _augment_step(job)
            return
        from collections import deque
        queue = deque(self.pool.apply_async(_augment_step, (job,)) for job in jobs[:self.ahead])
        for i in range(steps):
            batch = queue.popleft().get()
            if i + self.ahead < steps:
                queue.append(self.pool.apply_async(_augment_step, (jobs[i + self.ahead],)))
            yield batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
        if self.tmp is not None:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


# --- the loop -------------------------------------------------------------------------------

def init_from_bundle(model: nn.Module, path: Path, labels: list[str], backbone: str) -> None:
    """Start from a trained classifier (e.g. the 112-px one before a larger-size fine-tune:
    progressive resizing); refused when its labels or backbone differ."""
    from ..bundle import load_bundle

    bundle = load_bundle(path, kind="classifier", labels=labels)
    if bundle.architecture.get("backbone") != backbone:
        raise InputError(f"{path}: --init bundle has backbone {bundle.architecture.get('backbone')}, "
                         f"this run {backbone}; pass --backbone to match")
    model.load_state_dict(bundle.state_dict)


def train_classifier(cfg: ClassifierConfig) -> Path:
    from ..devices import validate_device

    torch.set_num_threads(cfg.threads)
    run = start_run("train classifier", cfg.out, cfg.resume, device=validate_device(cfg.device),
                    inputs=[cfg.data, cfg.pbc, cfg.packed, cfg.init, cfg.cache, cfg.recipe])
    cfg.device = run.device
    data = prepare_data(cfg)
    batches = BatchMaker(data.crops["train"].images, cfg.workers, cfg.low_res, cfg.stain_random)
    try:
        return _train(cfg, run, data, batches)
    finally:
        batches.close()


def held_out_line(test: dict | None, source: str, out: Path) -> str:
    """The held-out test scores, each metric named (a PBC source is also folded to its 8 folders)."""
    if test is None:
        return ("held-out test: its pixels are not in the pack; score it where the data is: "
                f"cvat-tools evaluate classifier --data PBC_DIR --bundle {out}")
    fine = test["fine"]
    line = (f"held-out test ({fine['n']} crops): macro-F1 {fine['macro_f1']:.3f}, "
            f"accuracy {fine['accuracy']:.3f}")
    if source == "pbc":
        folded = test["pbc_folders"]
        line += f"; folded to the 8 PBC folders: macro-F1 {folded['macro_f1']:.3f}, accuracy {folded['accuracy']:.3f}"
    return line


def _train(cfg: ClassifierConfig, run: Run, data: PreparedData, batches: BatchMaker) -> Path:
    device = run.device
    torch.manual_seed(cfg.seed)
    labels = data.labels
    index = L.label_index(labels)
    train_x = data.crops["train"].images
    train_y = np.array([index[lab] for lab in data.crops["train"].labels])

    model = build_classifier(cfg.backbone, len(labels), pretrained=cfg.pretrained and cfg.init is None)
    if cfg.init is not None:
        init_from_bundle(model, cfg.init, labels, cfg.backbone)
    model.to(device)
    if device != "cpu":
        model.to(memory_format=torch.channels_last)
    net = wrap(model, run)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = engine_steps(len(train_x), cfg.batch_size, run.world, cfg.max_steps)
    total = steps_per_epoch * cfg.epochs
    schedule = Schedule(optimizer, total, default_warmup(total) if cfg.warmup is None else cfg.warmup)
    meta = {"labels": labels, "size": cfg.size}
    progress = restore(run, model, optimizer, meta)

    from tqdm import tqdm
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))

    def train_epoch(epoch: int) -> dict:
        net.train()
        rng = np.random.default_rng([cfg.seed, epoch - 1, run.rank])
        picks = balanced_indices(train_y, steps_per_epoch * cfg.batch_size, rng)
        t0, seen, loss_sum = time.time(), 0, 0.0
        bar = tqdm(batches.epoch(picks, cfg.batch_size, steps_per_epoch, (cfg.seed, epoch - 1, run.rank)),
                   total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress or run.rank)
        for step, batch in enumerate(bar):
            schedule.set(progress.step)
            idx = picks[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = batch_tensor(data.stain.after_augmentation(batch), device)
            y = torch.from_numpy(train_y[idx]).to(device)
            with autocast:
                loss = F.cross_entropy(net(x).float(), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.step += 1
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
        return {"loss": round(loss_sum / max(seen, 1), 4), "img_s": round(seen / (time.time() - t0), 1)}

    def evaluate(epoch: int):
        val = score(model, data.crops["val"], labels, device)
        return val["fine"]["macro_f1"], {"val_macro_f1": val["fine"]["macro_f1"], "val_accuracy": val["fine"]["accuracy"]}

    fit(run, model, optimizer, progress, cfg.epochs, train_epoch, evaluate, meta, select="max")
    if not run.main:
        return cfg.out
    load_best(run, model, progress)
    test = score(model, data.crops["test"], labels, device)
    print(held_out_line(test, data.info.get("source"), cfg.out))
    model.to("cpu")
    return save_bundle(
        cfg.out, "classifier", model.state_dict(), labels,
        architecture={"backbone": cfg.backbone, "head": "linear", "framework": "timm"},
        input_size=cfg.size,
        stain=data.stain.to_manifest(),
        normalization={"mean": [0.5] * 3, "std": [0.5] * 3, "input": "RGB crops.cell_crop, resized square"},
        training=training_record(cfg, progress, started_from(cfg.init, "classifier"), data=data.info),
        metrics={"val_macro_f1": progress.best["score"], "test": test},
        split={"seed": cfg.seed, "fractions": list(cfg.fractions), "root": str(data.root),
               "files": D.split_to_manifest(data.split, data.root)},
    )
