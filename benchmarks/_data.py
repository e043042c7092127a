"""Where the benchmarks and experiments find the real data: ``$CVAT_TOOLS_DATA``, else
``../shared/data`` beside the checkout (what tests/conftest.py reads too)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CVAT_TOOLS_DATA") or REPO.parent / "shared" / "data")
