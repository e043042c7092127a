"""The CI guard of conftest.py: without data a developer gets skips that say what is missing;
under CVAT_TOOLS_REQUIRE_DATA=1 (set by .ci/run) the same run FAILS, and so does a skip of any
other origin (skipif, pytest.skip)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

PROBE = '''
import pytest

def test_needs_data(bccd_dir):
    pass

@pytest.mark.skipif(True, reason="some optional thing is absent")
def test_marked():
    pass

def test_runs():
    pass
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[bool, tuple[int, str]]:
    """The probe run without and with CVAT_TOOLS_REQUIRE_DATA, both at once (2 cores)."""
    procs = {}
    for require in (False, True):
        folder = tmp_path_factory.mktemp(f"probe_{int(require)}")
        (folder / "test_probe.py").write_text(PROBE)
        env = dict(os.environ, CVAT_TOOLS_DATA=str(folder / "no-data-here"),
                   PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]))
        env.pop("CVAT_TOOLS_REQUIRE_DATA", None)
        if require:
            env["CVAT_TOOLS_REQUIRE_DATA"] = "1"
        procs[require] = (folder, subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "conftest", "-p", "no:cacheprovider",
             str(folder / "test_probe.py")],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    out = {}
    for require, (folder, proc) in procs.items():
        text, _ = proc.communicate(timeout=120)
        out[require] = (proc.returncode, text, folder)
    return out


def test_developer_without_data_gets_skips_that_say_why(runs):
    code, out, folder = runs[False]
    assert code == 0, out
    assert "1 passed, 2 skipped" in out
    assert f"real data not found at {folder / 'no-data-here'}" in out


def test_ci_fails_on_missing_data_and_on_any_skip(runs):
    code, out, _ = runs[True]
    assert code == 1, out
    summary = out.strip().splitlines()[-1]  # both fail in setup: pytest counts them as errors
    assert "1 passed, 2 errors" in summary and "skipped" not in summary, summary
    assert "real data not found" in out and "CVAT_TOOLS_REQUIRE_DATA=1" in out
    assert "some optional thing is absent" in out
