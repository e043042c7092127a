"""Shared fixtures: the real data beside the checkout and the shipped model bundles.

A developer without ../shared/data gets skips that say what is missing. CI sets
``CVAT_TOOLS_REQUIRE_DATA=1`` (``.ci/run``): then a missing data set or shipped bundle FAILS
with the same message, and any other skip fails too (see ``pytest_runtest_makereport``), so a
green CI run means every test ran.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CVAT_TOOLS_DATA", REPO.parent / "shared" / "data"))
ENV_REQUIRE = "CVAT_TOOLS_REQUIRE_DATA"
REQUIRE_DATA = os.environ.get(ENV_REQUIRE, "").strip().lower() not in ("", "0", "false", "no")


def missing(message: str):
    """Skip for a developer; fail under CVAT_TOOLS_REQUIRE_DATA (CI). Every test-time
    dependency on something outside the tests (data, shipped weights) goes through here."""
    if REQUIRE_DATA:
        pytest.fail(f"{message} ({ENV_REQUIRE}=1: CI needs it, nothing may be skipped)",
                    pytrace=False)
    pytest.skip(message)


def _need(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        missing(f"real data not found at {path}; set CVAT_TOOLS_DATA to ../shared/data")
    return path


def need_shipped(kind: str) -> Path:
    """The shipped bundle of ``kind`` (cvat_tools/weights/<kind>), or skip/fail saying so."""
    from cvat_tools.bundle import shipped_bundle

    path = shipped_bundle(kind)
    if path is None:
        missing(f"no shipped {kind} bundle in cvat_tools/weights/{kind}")
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CVAT_TOOLS_REQUIRE_DATA a skip of any origin (skipif, importorskip, pytest.skip)
    is reported as a failure: CI must not turn green with tests that did not run."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_DATA and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under {ENV_REQUIRE}=1: {reason}"


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


# -- shipped models: each loaded once per session ----------------------------------------------


@pytest.fixture(scope="session")
def shipped_segmenter():
    """The shipped Mask R-CNN segmenter (cvat_tools/weights/segmenter), loaded once."""
    from cvat_tools.models.registry import load_segmenter

    return load_segmenter(need_shipped("segmenter"))


@pytest.fixture(scope="session")
def shipped_classifier():
    """The shipped classifier (cvat_tools/weights/classifier), loaded once."""
    from cvat_tools.classify.classifier import CellClassifier

    return CellClassifier.from_bundle(need_shipped("classifier"))


@pytest.fixture(scope="session")
def shipped_refiner_path() -> Path:
    return need_shipped("refiner")


@pytest.fixture(scope="session")
def shipped_paths() -> dict[str, Path]:
    """All three shipped bundles (segmenter, classifier, refiner): their folders."""
    return {kind: need_shipped(kind) for kind in ("segmenter", "classifier", "refiner")}


# -- the Nuclio function over a small weights folder ------------------------------------------


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """A weights folder: random classifier (labels.ALL_CLASSES), classical segmenter."""
    from pipeline_fakes import shared_weights

    return shared_weights()


@pytest.fixture(scope="module")
def nuclio(weights_dir):
    """(platform, handler) of main.py, its init_context run with CVAT_TOOLS_WEIGHTS set."""
    import nuclio_sdk.test

    from cvat_tools import serverless
    from nuclio_calls import event, load_main

    module = load_main("cvat_tools_wbc_main")
    old = os.environ.get(serverless.ENV_WEIGHTS)
    os.environ[serverless.ENV_WEIGHTS] = str(weights_dir)
    os.environ[serverless.ENV_DEVICE] = "cpu"
    platform = nuclio_sdk.test.Platform()
    platform.call_handler(module.handler, event({"image": ""}))  # runs init_context once
    yield platform, module.handler
    os.environ.pop(serverless.ENV_DEVICE, None)
    if old is None:
        os.environ.pop(serverless.ENV_WEIGHTS, None)
    else:
        os.environ[serverless.ENV_WEIGHTS] = old
