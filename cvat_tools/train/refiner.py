"""Train the DANN refiner, top to bottom.

    source: labelled PBC crops of the shared classes (the classifier's TRAIN split only, so its
            held-out test split stays unseen) [+ a few labelled target crops, --target-labels]
    target: unlabelled crops of other labs (BCCD train+val cells, JTSC, plain crop folders)
    -> optional Reinhard stain normalization to the source's LAB reference (both domains)
    -> DANN initialized from the trained classifier (body + head rows of the shared classes;
       --conditional: CDAN, the discriminator sees features x class probabilities)
    -> each step: equal-size source and target batches, both augmented;
       loss = CE(source labels) + BCE(domain) behind the gradient reversal, lambda on the
       Ganin-Lempitsky schedule [+ --target-im W: information maximization on the target
       batch, see im_loss]; Adam
    -> checkpoint each epoch (--resume); PBC val macro-F1 printed (target labels are never
       used for model selection) -> fp16 bundle of kind "refiner", labels SHARED_CLASSES,
       with the decision prior (--prior: trained class-balanced, it decides as if immature
       granulocytes were as common as neutrophils unless told the smear's real prior)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import labels as L
from ..bundle import load_bundle, save_bundle
from ..classify.classifier import to_tensor
from ..classify.dann import DANN, grl_lambda
from ..classify.stain import StainNormalizer
from ..data import cells as D
from ..errors import InputError
from ..metrics.classification import classification_report
from .augment import augment_batch
from .classification import balanced_indices, predict_cache
from .engine import (Progress, Run, Schedule, default_warmup, fit, restore, start_run, started_from, steps_per_epoch,
                     training_record)


@dataclass
class RefinerConfig:
    source: Path
    targets: list[Path]
    out: Path
    classifier: Path | None = None  # init + split from this classifier bundle
    init: Path | None = None  # continue from this refiner bundle (same labels, backbone, size)
    target_im: float = 0.0  # weight of the information-maximization loss on target batches
    conditional: bool = False  # CDAN: the discriminator sees features x class probabilities
    target_labels: Path | None = None  # a few labelled target crops: DIR/<class>/*.png
    epochs: int = 4
    size: int | None = None  # default: the classifier's input size, else 112
    backbone: str = "efficientnet_lite0"
    batch_size: int = 32  # per domain
    lr: float = 3e-4
    domain_weight: float = 0.3  # scales lambda (the reversed gradient)
    domain_lr_mult: float = 10.0
    stain: str = "reinhard"
    low_res: float = 0.0  # probability of the low-resolution augmentation on source crops
    stain_random: float = 0.0  # probability of the strong stain/camera randomization on source crops
    prior: str = "peripheral-blood"  # decision prior stored in the bundle (labels.PRIORS)
    target_label_share: float = 0.3  # of a class's source draws, the share of its labelled target crops
    seed: int = 0
    cache: Path | None = None
    mask: str | None = None  # how PBC source images are cut (D.MASK_SOURCES); None: as the classifier was
    resume: bool = False
    threads: int = 1
    max_steps: int | None = None
    pretrained: bool = True
    progress: bool = True
    labels: tuple[str, ...] = L.SHARED_CLASSES
    label_smoothing: float = 0.1  # of the source cross-entropy
    schedule: str = "constant"  # the lr: "constant" (the shipped recipe) or "cosine" (warm-up, then cosine)
    warmup: int | None = None  # with "cosine": warm-up steps; None: 5% of the steps, at most 100
    recipe: Path | None = None  # the --config file these values came from (recorded)


@dataclass
class DomainData:
    source_x: np.ndarray
    source_y: np.ndarray
    val_x: np.ndarray
    val_y: list[str]
    target_x: np.ndarray
    stain: StainNormalizer
    labelled_target: np.ndarray  # bool per source_x row: a labelled crop of the target lab
    info: dict = field(default_factory=dict)


def _source_split(cfg: RefinerConfig, classifier_manifest: dict | None) -> dict[str, list[D.Sample]]:
    """The classifier's split when there is one (same images held out), else our own."""
    wanted = set(cfg.labels)
    files = (classifier_manifest or {}).get("split", {}).get("files")
    if files and all((Path(cfg.source) / rel).is_file() for rel, _ in files["test"][:20]):
        return {k: [s for s in D.split_from_manifest(files, cfg.source, k) if s.label in wanted]
                for k in ("train", "val", "test")}
    kind = D.dataset_kind(cfg.source)
    samples = D.pbc_samples(cfg.source, cfg.labels) if kind == "pbc" else \
        [s for s in D.folder_samples(cfg.source) if s.label in wanted]
    D.check_samples(samples)
    kept, _ = D.dedupe(samples)
    return D.stratified_split(kept, cfg.seed)


def source_mask(cfg: RefinerConfig, classifier_manifest: dict | None) -> str:
    """The mask that cuts PBC source crops: --mask, else the one the classifier was trained on
    (the refiner starts from its body, and the pipeline feeds both the same crops)."""
    if cfg.mask is not None:
        return cfg.mask
    return D.bundle_mask_source(classifier_manifest)


def prepare_domains(cfg: RefinerConfig, classifier_manifest: dict | None) -> DomainData:
    """Load and check both domains before training; every failure here names its folder."""
    if not cfg.targets:
        raise InputError("pass at least one --target DIR (unlabelled crops of the other lab)")
    if cfg.mask not in (None, "classical") and D.dataset_kind(cfg.source) != "pbc":
        raise InputError("--mask picks how PBC images are cut; crops from --source folders are used as given")
    split = _source_split(cfg, classifier_manifest)
    present = [lab for lab in cfg.labels if any(s.label == lab for s in split["train"])]
    missing = [lab for lab in cfg.labels if lab not in present]
    if len(present) < 2:
        raise InputError(f"{cfg.source}: source training crops of {present or 'no class'} only; the refiner "
                         f"needs at least 2 of {list(cfg.labels)}")
    if missing:
        print(f"source has no crops of {', '.join(missing)}: the label head keeps these classes (from the "
              f"classifier) but trains on the other {len(present)}", flush=True)
    pbc_mode = D.dataset_kind(cfg.source) == "pbc"
    mask = source_mask(cfg, classifier_manifest)
    train = D.build_cache(split["train"], cfg.size, pbc_mode, cfg.cache, progress=cfg.progress, mask=mask)
    val = D.build_cache(split["val"], cfg.size, pbc_mode, cfg.cache, progress=cfg.progress, mask=mask)
    targets, target_counts = [], {}
    for root in cfg.targets:
        crops = D.target_crops(root, cfg.size)
        target_counts[str(root)] = len(crops)
        targets += crops
    index = L.label_index(cfg.labels)
    source_x, source_y = train.images, np.array([index[lab] for lab in train.labels])
    n_labelled_target = 0
    if cfg.target_labels is not None:
        few = [s for s in D.folder_samples(cfg.target_labels) if s.label in index]
        if not few:
            raise InputError(f"{cfg.target_labels}: no crops of the refiner's classes {list(cfg.labels)}")
        few_cache = D.build_cache(few, cfg.size, False, None, progress=False)
        source_x = np.concatenate([source_x, few_cache.images])
        source_y = np.concatenate([source_y, [index[lab] for lab in few_cache.labels]])
        n_labelled_target = len(few)
    stain = StainNormalizer.fit(cfg.stain, train.images)
    target_x = np.stack(targets)
    if stain.method != "none":
        source_x = np.stack([stain(c) for c in source_x])
        target_x = np.stack([stain(c) for c in target_x])
        val_images = np.stack([stain(c) for c in val.images])
    else:
        val_images = val.images
    info = {"source": str(cfg.source), "source_train": int(len(train.images)),
            "source_train_counts": {lab: int((source_y == i).sum()) for lab, i in index.items()},
            "labelled_target_crops": n_labelled_target, "targets": target_counts, "source_missing": missing,
            "crop_mask": train.info.get("mask")}
    labelled_target = np.arange(len(source_x)) >= len(train.images)
    return DomainData(source_x, source_y, val_images, val.labels, target_x, stain, labelled_target, info)


def source_draws(labels: np.ndarray, labelled_target: np.ndarray, n: int, share: float,
                 rng: np.random.Generator) -> np.ndarray:
    """``n`` source indices, every class equally likely. Within a class that has labelled target
    crops, those few get ``share`` of its draws: five corrections among 500 PBC crops of a class
    would otherwise be seen about once an epoch."""
    if not labelled_target.any():
        return balanced_indices(labels, n, rng)
    weights = np.zeros(len(labels))
    for c in np.unique(labels):
        in_class = labels == c
        few, many = in_class & labelled_target, in_class & ~labelled_target
        if few.any() and many.any():
            weights[few] = share / few.sum()
            weights[many] = (1 - share) / many.sum()
        else:
            weights[in_class] = 1.0 / in_class.sum()
    return rng.choice(len(labels), size=n, replace=True, p=weights / weights.sum())


def im_loss(logits: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Information maximization on unlabelled target crops (SHOT, Liang et al. 2020), with the
    field's prior in place of SHOT's uniform class marginal.

    p = softmax(logits + log prior): the posterior the bundle decides with. Minimizing each
    crop's entropy H(p) makes the decision confident (features of the new lab move towards a
    class); keeping KL(mean p || prior) small stops that from collapsing onto one class: a
    batch of a smear's cells should look like its differential, mostly neutrophils and
    lymphocytes, a few monocytes and eosinophils.
    """
    log_p = F.log_softmax(logits + log_prior, dim=1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(1).mean()
    mean_p = p.mean(0).clamp_min(1e-8)
    divergence = (mean_p * (mean_p.log() - log_prior)).sum()
    return entropy + divergence


def _check_init(cfg: RefinerConfig):
    """The refiner bundle to continue from: refused now, not after the data is loaded."""
    if cfg.init is None:
        return None
    start = load_bundle(cfg.init, kind="refiner", labels=list(cfg.labels))
    wanted = "CDAN" if cfg.conditional else "DANN"
    if start.architecture.get("model", "DANN") != wanted:
        raise InputError(f"{cfg.init}: a {start.architecture.get('model', 'DANN')} refiner; this run trains a "
                         f"{wanted} ({'drop' if cfg.conditional else 'add'} --conditional)")
    if (start.architecture.get("backbone") != cfg.backbone
            or int(start.manifest.get("input_size", 0)) != cfg.size):
        raise InputError(f"{cfg.init}: refiner is {start.architecture.get('backbone')} at "
                         f"{start.manifest.get('input_size')} px, this run {cfg.backbone} at {cfg.size} px")
    return start


def _setup(cfg: RefinerConfig):
    """(classifier bundle, refiner bundle to continue from, decision prior): every refusal
    that needs no data."""
    classifier = load_bundle(cfg.classifier, kind="classifier") if cfg.classifier else None
    if classifier is not None:
        missing = [lab for lab in cfg.labels if lab not in classifier.labels]
        if missing:
            raise InputError(f"{cfg.classifier}: classifier lacks the refiner classes {missing}")
        cfg.size = cfg.size or int(classifier.manifest.get("input_size", 112))
        cfg.backbone = classifier.architecture.get("backbone", cfg.backbone)
    cfg.size = cfg.size or 112
    if cfg.schedule not in ("constant", "cosine"):
        raise InputError(f"schedule '{cfg.schedule}': use constant or cosine")
    try:  # refuse an unusable prior before any training
        prior = L.prior_weights(cfg.prior, cfg.labels)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return classifier, _check_init(cfg), prior


def train_refiner(cfg: RefinerConfig) -> Path:
    run = start_run("train refiner", cfg.out, cfg.resume, distributed=False,
                    inputs=[cfg.source, *cfg.targets, cfg.target_labels, cfg.classifier, cfg.init, cfg.cache,
                            cfg.recipe])
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    classifier, start, prior = _setup(cfg)
    data = prepare_domains(cfg, classifier.manifest if classifier else None)
    labels = list(cfg.labels)

    model = DANN(len(labels), cfg.backbone, pretrained=cfg.pretrained and classifier is None,
                 conditional=cfg.conditional)
    if classifier is not None:
        model.init_from_classifier(classifier.state_dict, classifier.labels, labels)
    if start is not None:
        model.load_state_dict(start.state_dict)
    weights = prior or {lab: 1.0 / len(labels) for lab in labels}
    log_prior = torch.tensor([math.log(weights[lab]) for lab in labels])
    # The discriminator learns faster than the features (domain_lr_mult): if it lags, the
    # reversed gradient flips the domains back and forth instead of aligning them.
    optimizer = torch.optim.Adam([
        {"params": [*model.features.parameters(), *model.label_head.parameters()], "lr": cfg.lr},
        {"params": model.domain_head.parameters(), "lr": cfg.lr * cfg.domain_lr_mult},
    ])
    steps = steps_per_epoch(len(data.source_x), cfg.batch_size, max_steps=cfg.max_steps)
    meta = {"labels": labels, "size": cfg.size}
    progress = restore(run, model, optimizer, meta)
    total = steps * cfg.epochs
    schedule = None  # "constant": the lr as given
    if cfg.schedule == "cosine":
        schedule = Schedule(optimizer, total, default_warmup(total) if cfg.warmup is None else cfg.warmup)
    train_epoch = _epoch_fn(cfg, run, model, optimizer, schedule, data, log_prior, steps, progress)

    def evaluate(epoch: int):
        val_pred = [labels[i] for i in predict_cache(model, data.val_x).argmax(1)]
        f1 = round(classification_report(data.val_y, val_pred, labels).macro_f1, 4)
        return f1, {"pbc_val_macro_f1": f1}

    fit(run, model, optimizer, progress, cfg.epochs, train_epoch, evaluate, meta, select="last")
    # the refiner's weights start from --init when given (over the classifier's), else from the classifier
    start_from = started_from(cfg.init, "refiner") if cfg.init else started_from(cfg.classifier, "classifier")
    return save_bundle(
        cfg.out, "refiner", model.state_dict(), labels,
        architecture={"backbone": cfg.backbone, "model": "CDAN" if cfg.conditional else "DANN",
                      "domain_hidden": 256, "framework": "timm"},
        input_size=cfg.size,
        stain=data.stain.to_manifest(),
        decision_prior={"name": cfg.prior, "weights": prior},
        normalization={"mean": [0.5] * 3, "std": [0.5] * 3, "input": "RGB crops.cell_crop, resized square"},
        training=training_record(cfg, progress, start_from, data=data.info),
        metrics={"pbc_val_macro_f1": progress.history[-1]["pbc_val_macro_f1"] if progress.history else None},
    )


def _epoch_fn(cfg: RefinerConfig, run: Run, model, optimizer, schedule, data: DomainData, log_prior,
              steps: int, progress: Progress):
    """One epoch of DANN steps: equal source and target batches, both augmented."""
    from tqdm import tqdm

    domain = torch.cat([torch.zeros(cfg.batch_size), torch.ones(cfg.batch_size)])
    total = steps * cfg.epochs

    def train_epoch(epoch: int) -> dict:
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch - 1])
        src = source_draws(data.source_y, data.labelled_target, steps * cfg.batch_size, cfg.target_label_share, rng)
        tgt = rng.choice(len(data.target_x), size=steps * cfg.batch_size, replace=True)
        t0, sums = time.time(), {"cls": 0.0, "dom": 0.0, "dom_acc": 0.0, "im": 0.0}
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress)
        for step in bar:
            if schedule is not None:
                schedule.set(progress.step)
            lam = grl_lambda(((epoch - 1) * steps + step) / max(total, 1))
            s_idx = src[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            t_idx = tgt[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            batch = np.concatenate([augment_batch(data.source_x[s_idx], rng, cfg.low_res, cfg.stain_random),
                                    augment_batch(data.target_x[t_idx], rng)])
            logits, dom_logits = model(to_tensor(data.stain.after_augmentation(batch)), lam * cfg.domain_weight)
            cls_loss = F.cross_entropy(logits[:cfg.batch_size], torch.from_numpy(data.source_y[s_idx]),
                                       label_smoothing=cfg.label_smoothing)
            dom_loss = F.binary_cross_entropy_with_logits(dom_logits, domain)
            loss = cls_loss + dom_loss
            if cfg.target_im > 0:
                im = im_loss(logits[cfg.batch_size:], log_prior)
                loss = loss + cfg.target_im * im
                sums["im"] += float(im.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.step += 1
            sums["cls"] += float(cls_loss.detach())
            sums["dom"] += float(dom_loss.detach())
            sums["dom_acc"] += float(((dom_logits > 0).float() == domain).float().mean())
            bar.set_postfix(cls=f"{sums['cls'] / (step + 1):.3f}", dom=f"{sums['dom'] / (step + 1):.3f}",
                            lam=f"{lam:.2f}", **({"im": f"{sums['im'] / (step + 1):.3f}"} if cfg.target_im > 0 else {}))
        n = steps
        return {"cls_loss": round(sums["cls"] / n, 4), "domain_loss": round(sums["dom"] / n, 4),
                **({"target_im_loss": round(sums["im"] / n, 4)} if cfg.target_im > 0 else {}),
                "domain_accuracy": round(sums["dom_acc"] / n, 4), "lambda": round(lam, 3),
                "img_s": round(2 * n * cfg.batch_size / (time.time() - t0), 1)}
    return train_epoch
