"""The CI guard of conftest.py: without data a developer gets skips that say what is missing;
under CVAT_TOOLS_REQUIRE_DATA=1 (set by .ci/run) the same run FAILS, and so does a skip of any
other origin (skipif, pytest.skip)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def _pytest(tmp_path, require: bool) -> tuple[int, str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = dict(os.environ, CVAT_TOOLS_DATA=str(tmp_path / "no-data-here"),
               PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]))
    env.pop("CVAT_TOOLS_REQUIRE_DATA", None)
    if require:
        env["CVAT_TOOLS_REQUIRE_DATA"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "conftest",
                           "-p", "no:cacheprovider", str(tmp_path / "test_probe.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_developer_without_data_gets_skips_that_say_why(tmp_path):
    code, out = _pytest(tmp_path, require=False)
    assert code == 0, out
    assert "1 passed, 2 skipped" in out
    assert f"real data not found at {tmp_path / 'no-data-here'}" in out


def test_ci_fails_on_missing_data_and_on_any_skip(tmp_path):
    code, out = _pytest(tmp_path, require=True)
    assert code == 1, out
    summary = out.strip().splitlines()[-1]  # both fail in setup: pytest counts them as errors
    assert "1 passed, 2 errors" in summary and "skipped" not in summary, summary
    assert "real data not found" in out and "CVAT_TOOLS_REQUIRE_DATA=1" in out
    assert "some optional thing is absent" in out
