"""Shared fixtures: the real data beside the checkout, skipped with a message when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CVAT_TOOLS_DATA", REPO.parent / "shared" / "data"))


def _need(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not found at {path}; set CVAT_TOOLS_DATA to ../shared/data")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need("")


@pytest.fixture(scope="session")
def cvat_xml_dir() -> Path:
    return _need("cvat_xml")


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    return _need("bccd_wbc")


@pytest.fixture(scope="session")
def jtsc_dir() -> Path:
    return _need("jtsc_wbc")


@pytest.fixture(scope="session")
def pbc_dir() -> Path:
    return _need("pbc")
