"""Training runs: the checks made before any work, and checkpoints that cannot run code.

A run writes its bundle to ``--out`` and its checkpoints to the run folder beside it
(``OUT.ckpt``; see engine.py). Both are checked up front (the --out policy of
:mod:`cvat_tools.outdir`), and ``--resume`` without a checkpoint is an error, not a silent
fresh start. Checkpoints hold only tensors and plain data (numbers, strings, lists, dicts),
so they load with ``torch.load(weights_only=True)``: a pickle planted in the work folder is
refused instead of executed.
"""
from __future__ import annotations

import pickle
from pathlib import Path

from ..markers import MARKER, read_marker, write_marker
from ..errors import InputError
from ..outdir import check_out

LAST = "last.pt"
WORK = "train"  # the marker's command in a work folder (written with its first checkpoint)
_EARLIER_NAMES = ("last.pt", "best.pt")  # what a work folder held before it had the marker


def prepare_run(out: Path, work: Path, command: str, resume: bool, inputs=()) -> Path:
    """Refuse, before any work, an --out or work folder that is not this command's (or that
    holds one of the run's ``inputs``), and a --resume with nothing to resume from. Returns
    the checkpoint path (work/last.pt)."""
    inputs = [p for p in inputs if p is not None]
    check_out(out, command, inputs=inputs)
    _check_work(work, command)
    last = work / LAST
    if resume and not last.is_file():
        raise InputError(f"--resume: there is no checkpoint {last} (no earlier run into --out {out}); "
                         "drop --resume to start from scratch")
    return last


def _check_work(work: Path, command: str) -> None:
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise InputError(f"{work}: the work folder of --out is not a folder; move it away (nothing was changed)")
    if not work.exists():
        return
    marker = read_marker(work)
    if marker is not None and marker.get("command") == WORK:
        return
    names = [p.name for p in work.iterdir()]
    earlier = all(n in _EARLIER_NAMES or n.startswith(tuple(f".{e}." for e in _EARLIER_NAMES))
                  for n in names)
    if marker is not None or not earlier:
        raise InputError(f"{work}: the work folder of --out holds files not written by 'cvat-tools {command}' "
                         f"(no {MARKER} for it); choose another --out, or move that folder away "
                         "(nothing was changed)")


def plain_data(obj):
    """numpy scalars/arrays and paths as the plain types weights_only loading accepts."""
    import numpy as np
    import torch

    if isinstance(obj, dict):
        if all(torch.is_tensor(v) for v in obj.values()):
            return obj  # a state dict: kept as it is (its version metadata included)
        return {k: plain_data(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_data(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain_data(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically; the work folder is made (or adopted, from before the marker) here, so a run
    refused before its first checkpoint leaves none behind."""
    import torch

    from ..atomic import atomic_path

    work = Path(path).parent
    if read_marker(work) is None:
        work.mkdir(parents=True, exist_ok=True)
        write_marker(work, WORK)
    with atomic_path(path) as tmp:
        torch.save(plain_data(state), tmp)


def load_checkpoint(path: Path) -> dict:
    """Tensors and plain data only; anything else is refused, never unpickled."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: refused: the checkpoint holds Python objects, not only tensors and "
                         "plain data (nothing in it was run); delete it to start over") from None
    except Exception as exc:  # truncated, not a torch file, ...: one line, not a traceback
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{path}: cannot resume from this checkpoint ({reason}); delete it to start over") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a cvat-tools checkpoint; delete it to start over")
    return state
