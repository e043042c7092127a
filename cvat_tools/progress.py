"""Progress on stderr for long commands: bars and a status line, only for a person watching.

They go to stderr (stdout stays the command's data, safe to pipe) and only when stderr is a
terminal: a log file or a CI job gets no carriage-return noise.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable


def interactive() -> bool:
    """True when stderr is a terminal (a person is watching)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def tqdm_args(**extra: Any) -> dict[str, Any]:
    """Keyword arguments of a tqdm bar that follows the rule above (also for cvat-sdk's
    ``DeferredTqdmProgressReporter(tqdm_args)``)."""
    return {"file": sys.stderr, "disable": not interactive(), "dynamic_ncols": True, **extra}


def bar(iterable: Iterable | None = None, desc: str = "", unit: str = "it", **extra: Any):
    """A tqdm bar over ``iterable`` on stderr, off when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, **tqdm_args(desc=desc, unit=unit, **extra))


def status(message: str) -> None:
    """One line of what is happening now (e.g. loading models), on a terminal only."""
    if interactive():
        print(message, file=sys.stderr, flush=True)
