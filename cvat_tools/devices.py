"""``--device``: cpu, cuda or cuda:N, checked when the command line is read.

A wrong name, or CUDA on a machine without a visible GPU, is a one-line error before any
model is loaded or any data read (torch would raise deep inside, after the work began).
"""
from __future__ import annotations

import re

from .errors import InputError


def validate_device(value: str | None, flag: str = "--device") -> str | None:
    """The device as torch names it; None stays None (the command's own default)."""
    if value is None:
        return None
    device = str(value).strip().lower()
    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", device):
        raise InputError(f"{flag} {value}: not a device; use cpu, cuda or cuda:N (N: the GPU's number)")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"{flag} {value}: no CUDA device is visible here; use --device cpu")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise InputError(f"{flag} {value}: only {count} CUDA device(s) visible here "
                             f"(cuda:0 to cuda:{count - 1})")
    return device


def device_option(ctx, param, value):
    """click callback for a ``--device`` option."""
    return validate_device(value, f"--{param.name}" if param is not None and param.name else "--device")
