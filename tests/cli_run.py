"""Run the real ``cvat-tools`` entry point in-process, as a user sees it."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from cvat_tools.cli import main


class _Terminal(io.StringIO):
    """A captured stderr that says it is a terminal (progress bars draw on terminals only)."""

    def isatty(self) -> bool:
        return True


def run_cli(*args: str | Path, terminal: bool = False) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``cvat-tools ARGS...``; ``terminal``: stderr is a tty."""
    out, err = io.StringIO(), _Terminal() if terminal else io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()
