"""What the three trainers share, as torchvision's references/detection splits engine.py from
train.py: each trainer keeps its data and its step; this module holds the rest.

    start_run     --out and its run folder <out>.ckpt checked before any work; distributed setup
    Schedule      linear warm-up, then cosine decay (or a constant lr), set before each step
    fit           the epoch loop: one history line per epoch (epochs numbered from 1), model
                  selection into best.pt, last.pt after every epoch (atomic, weights_only),
                  --resume, and Ctrl-C -> the last checkpoint kept and the --resume command shown
    started_from  the one shape of the "started from this bundle" record in a manifest
    training_record  the manifest's training section: the resolved config (as Ultralytics'
                  args.yaml), the recipe file, the history and where the weights started
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError, Interrupted
from .checkpoint import load_checkpoint, plain_data, prepare_run, save_checkpoint

RUN_SUFFIX = ".ckpt"
LEGACY_SUFFIX = ".work"  # the classifier's and refiner's run folder before the engine
FORMAT = 2  # last.pt layout; 1 (no "format" key) was each trainer's own


class TrainingInterrupted(Interrupted):
    """Ctrl-C during training: the checkpoint of the last whole epoch is kept. ``done``: epochs
    in ``last`` (None: not known here, e.g. Ctrl-C while the data was read or the bundle written)."""

    def __init__(self, last: Path, done: int | None, total: int | None = None):
        self.last, self.done, self.total = last, done, total
        self.command: str | None = None  # the --resume command line, filled in by the CLI
        super().__init__()

    def __str__(self) -> str:
        if self.done == 0 or (self.done is None and not self.last.is_file()):
            return ("interrupted before the first epoch finished: no checkpoint, nothing to resume; "
                    "run the command again")
        how = self.command or "the same command with --resume"
        if self.done is None:
            return f"interrupted; {self.last} holds the last finished epoch, continue with: {how}"
        return (f"interrupted in epoch {self.done + 1} of {self.total}; {self.last} holds epoch "
                f"{self.done}, continue with: {how}")


@dataclass
class Run:
    command: str  # "train classifier": the owner recorded in the run folder's marker
    out: Path
    folder: Path
    resume: bool
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    @property
    def main(self) -> bool:
        return self.rank == 0


def run_folder(out: str | Path) -> Path:
    return Path(f"{out}{RUN_SUFFIX}")


def start_run(command: str, out: str | Path, resume: bool, inputs=(), device: str = "cpu",
              folder: str | Path | None = None, distributed: bool = True) -> Run:
    """Refuse a bad --out, run folder or --resume before any work (rank 0 alone writes them),
    then join the process group when torchrun started this process."""
    out = Path(out)
    folder = Path(folder) if folder else run_folder(out)
    if int(os.environ.get("RANK", "0")) == 0:
        legacy = Path(f"{out}{LEGACY_SUFFIX}")
        if resume and not (folder / "last.pt").exists() and (legacy / "last.pt").is_file():
            raise InputError(f"--resume: run folders are now named {folder.name}; rename {legacy} to {folder} "
                             "(mv) and run the command again")
        prepare_run(out, folder, command, bool(resume), inputs=inputs)
    rank, world = 0, 1
    if distributed:
        rank, world, device = setup_distributed(device)
    return Run(command, out, folder, bool(resume), rank, world, device)


def setup_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, this rank's device); a process group only under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return dist.get_rank(), dist.get_world_size(), device


def wrap(model, run: Run, **ddp):
    import torch

    return torch.nn.parallel.DistributedDataParallel(model, **ddp) if run.world > 1 else model


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def barrier(run: Run) -> None:
    if run.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --- learning rate ----------------------------------------------------------------------------

def lr_factor(step: int, total: int, warmup: int, start: float | None = None, cosine: bool = True) -> float:
    """The base lr's multiplier at optimizer step ``step`` (from 0) of ``total``.

    ``start`` None: the warm-up ramps (step + 1) / warmup while the cosine runs over the whole
    run (classifier, refiner); ``start`` s: it ramps from s to 1 and the cosine runs over the
    steps after it (segmenter; torchvision's LinearLR start_factor). Both shapes are kept so
    that a recipe trains as it did before the engine."""
    if start is None:
        ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        return ramp * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0))) if cosine else ramp
    if step < warmup:
        return start + (1 - start) * step / warmup
    if not cosine:
        return 1.0
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def steps_per_epoch(items: int, batch_size: int, world: int = 1, max_steps: int | None = None) -> int:
    """Steps that draw ``items`` once over all ranks; ``max_steps`` caps it (smoke tests)."""
    steps = math.ceil(items / (batch_size * world))
    return min(steps, max_steps) if max_steps else steps


def default_warmup(total: int) -> int:
    """5% of the steps, at most 100."""
    return min(100, max(total // 20, 1))


class Schedule:
    """Sets every parameter group's lr to its base lr x lr_factor before each step."""

    def __init__(self, optimizer, total: int, warmup: int, start: float | None = None, cosine: bool = True):
        self.optimizer, self.total, self.warmup, self.start, self.cosine = optimizer, total, warmup, start, cosine
        self.base = [group["lr"] for group in optimizer.param_groups]

    def set(self, step: int) -> float:
        factor = lr_factor(step, self.total, self.warmup, self.start, self.cosine)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * factor
        return self.optimizer.param_groups[0]["lr"]


# --- the epoch loop ---------------------------------------------------------------------------

@dataclass
class Progress:
    """Where a run stands; restored by --resume."""

    epoch: int = 0  # whole epochs done
    step: int = 0  # optimizer steps done
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"score": None, "epoch": 0, "metrics": {}})


def _better(score: float, best: dict, select: str) -> bool:
    if best["score"] is None or select == "last":
        return True
    return score >= best["score"] if select == "max_or_equal" else score > best["score"]


def _rng_state() -> dict:
    """The global generators (dropout, DataLoader shuffling, the segmenter's augmentation), so
    that a resumed run continues exactly as the uninterrupted one would have."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def restore(run: Run, model, optimizer, meta: dict) -> Progress:
    """The state of ``run.last`` into ``model`` and ``optimizer`` (a fresh Progress without --resume).
    ``meta`` (labels, input size, ...) must be what the checkpoint was made for."""
    if not run.resume:
        return Progress()
    state = load_checkpoint(run.last)
    if state.get("format") != FORMAT:
        raise InputError(f"{run.last}: a checkpoint of an earlier cvat-tools version (before the training "
                         f"engine); finish that run with it, or move {run.folder} away and drop --resume")
    differ = sorted(k for k in meta if state.get("meta", {}).get(k) != meta[k])
    if differ:
        raise InputError(f"{run.last}: checkpoint was made for other {' or '.join(sorted(meta))} "
                         f"({', '.join(differ)} differ); drop --resume")
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    progress = Progress(state["epoch"], state["step"], state["history"], state["best"])
    if run.main:
        print(f"resumed after epoch {progress.epoch} ({run.last})", flush=True)
    return progress


def fit(run: Run, model, optimizer, progress: Progress, epochs: int, train_epoch: Callable[[int], dict],
        evaluate: Callable[[int], tuple[float | None, dict]], meta: dict, select: str = "max") -> Progress:
    """Epochs ``progress.epoch + 1 .. epochs``. ``train_epoch(epoch)`` runs one epoch's steps
    (advancing ``progress.step``) and returns its history fields; on rank 0 ``evaluate(epoch)``
    returns (selection score or None, fields). ``select``: "max" (first best kept on ties),
    "max_or_equal" (later epochs win ties) or "last". The best weights go to best.pt (not for
    "last": the final weights are the result), everything to last.pt after each epoch."""
    try:
        for epoch in range(progress.epoch + 1, epochs + 1):
            record = {"epoch": epoch, **train_epoch(epoch)}
            if run.main:
                score, fields = plain_data(evaluate(epoch))
                record = plain_data({**record, **fields})
                print(json.dumps(record), flush=True)
                progress.history.append(record)
                if _better(score, progress.best, select):
                    progress.best = {"score": score, "epoch": epoch, "metrics": fields}
                    if select != "last":
                        save_checkpoint(run.best, unwrap(model).state_dict())
                progress.epoch = epoch
                save_checkpoint(run.last, {"format": FORMAT, "model": unwrap(model).state_dict(),
                                           "optimizer": optimizer.state_dict(), "epoch": epoch,
                                           "step": progress.step, "history": progress.history,
                                           "best": progress.best, "meta": meta, "rng": _rng_state()})
            else:
                progress.epoch = epoch
    except KeyboardInterrupt:
        raise TrainingInterrupted(run.last, progress.epoch, epochs) from None
    barrier(run)
    return progress


def load_best(run: Run, model, progress: Progress, select: str = "max") -> None:
    """The selected epoch's weights into ``model`` (for "last" they are there already)."""
    if select != "last":
        import torch

        unwrap(model).load_state_dict(torch.load(run.best, map_location="cpu", weights_only=True))


# --- the manifest's record --------------------------------------------------------------------

def plain(value: Any) -> Any:
    """A config value as JSON: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def started_from(path: str | Path | None, kind: str) -> dict | None:
    """Where a run's weights started: the bundle's path, kind, weight checksum, and how it was made
    (its training record and scores), so a multi-stage recipe stays traceable from one manifest."""
    if path is None:
        return None
    from ..bundle import read_manifest

    manifest = read_manifest(path)
    return {"path": str(path), "kind": kind, "weights_sha256": (manifest.get("weights") or {}).get("sha256"),
            "training": manifest.get("training"), "metrics": manifest.get("metrics")}


def training_record(cfg, progress: Progress, start: dict | None, **extra) -> dict:
    """The manifest's ``training``: every config field as resolved (recipe file, then options),
    the history, and ``started_from``."""
    return {**plain(asdict(cfg)), **extra, "history": progress.history, "started_from": start}
