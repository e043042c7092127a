"""deploy.sh against a fake nuctl that records its arguments (no Docker, no Nuclio needed)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy.sh"

FAKE_NUCTL = r"""#!/bin/bash
# records every call; lists the build context it is asked to deploy
echo "nuctl $*" >> "$NUCTL_LOG"
case "$1" in
  version) printf 'Client version:\n"Label: %s, Git commit: abc"\n' "${FAKE_NUCTL_VERSION:-1.15.9}" ;;
  get) [[ "$2" == project && -z "${FAKE_PROJECT_EXISTS:-}" ]] && exit 1 ;;
  deploy)
    while [[ $# -gt 0 ]]; do
      if [[ "$1" == --path ]]; then (cd "$2" && find . -type f | sort) > "$NUCTL_LOG.context"; fi
      shift
    done ;;
esac
exit 0
"""


@pytest.fixture
def env(tmp_path):
    """PATH with the fake nuctl and only the system tools (no docker, no real nuctl)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nuctl = bin_dir / "nuctl"
    nuctl.write_text(FAKE_NUCTL)
    nuctl.chmod(0o755)
    weights = tmp_path / "weights"
    for kind in ("classifier", "segmenter"):
        (weights / kind).mkdir(parents=True)
        (weights / kind / "manifest.json").write_text("{}")
        (weights / kind / "weights.pt").write_bytes(b"w")
    log = tmp_path / "nuctl.log"
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NUCTL_LOG": str(log), "HOME": str(tmp_path),
               "TMPDIR": str(tmp_path)}
    return {"env": environ, "log": log, "weights": weights, "bin": bin_dir, "tmp": tmp_path}


def deploy(env, *args, **extra):
    return subprocess.run(["bash", str(DEPLOY), *args], env={**env["env"], **extra},
                          capture_output=True, text=True, timeout=60)


def calls(env):
    return env["log"].read_text().splitlines() if env["log"].exists() else []


def test_syntax_and_shellcheck():
    from conftest import missing

    ci_run = DEPLOY.parent / ".ci" / "run"
    for script in (DEPLOY, ci_run):
        subprocess.run(["bash", "-n", str(script)], check=True)
    if not shutil.which("shellcheck"):
        missing("shellcheck is not installed (apt-get install shellcheck; .ci/run installs it)")
    result = subprocess.run(["shellcheck", str(DEPLOY), str(ci_run)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_missing_nuctl_is_a_clear_error(env):
    (env["bin"] / "nuctl").unlink()
    result = deploy(env, "--weights", str(env["weights"]))
    assert result.returncode != 0
    assert "nuctl" in result.stderr and "not on PATH" in result.stderr
    assert "releases/download/1.15.9/nuctl-1.15.9-linux-amd64" in result.stderr


def test_dry_run_prints_and_runs_nothing(env):
    result = deploy(env, "--dry-run", "--weights", str(env["weights"]))
    assert result.returncode == 0, result.stderr
    assert calls(env) == ["nuctl version"]  # the only thing a dry run asks nuctl
    out = result.stdout
    assert "+ nuctl create project cvat --platform local" in out
    assert "+ nuctl deploy pth-cvat-tools-wbc --project-name cvat --path " in out
    assert "/function.yaml --platform local --platform-config" in out
    assert "cvat_cvat" in out and "Dry run: nothing was deployed." in out
    assert "no refiner bundle" in result.stderr


def test_dry_run_without_nuctl_prints_the_commands(env):
    """A preview needs no nuctl installed (issue 21); a real run still refuses without it."""
    (env["bin"] / "nuctl").unlink()
    result = deploy(env, "--dry-run", "--weights", str(env["weights"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "+ nuctl create project cvat --platform local" in out
    assert "+ nuctl deploy pth-cvat-tools-wbc --project-name cvat --path " in out
    assert "+ nuctl get function pth-cvat-tools-wbc --platform local" in out
    assert "Dry run: nothing was deployed." in out
    assert "not on PATH" in result.stderr and "nuctl-1.15.9-linux-amd64" in result.stderr
    assert "could not read 'nuctl version'" not in result.stderr
    assert not list(env["tmp"].glob("cvat-tools-nuclio.*"))  # staged context removed


def test_real_run_creates_project_once_and_deploys_the_staged_context(env):
    result = deploy(env, "--weights", str(env["weights"]), "--gpu")
    assert result.returncode == 0, result.stderr
    log = calls(env)
    assert log[0] == "nuctl version"
    assert log[1] == "nuctl get project cvat --platform local"
    assert log[2] == "nuctl create project cvat --platform local"
    deploy_call = log[3]
    assert deploy_call.startswith("nuctl deploy pth-cvat-tools-wbc --project-name cvat --path ")
    assert "/function-gpu.yaml --platform local --platform-config" in deploy_call
    assert log[4] == "nuctl get function pth-cvat-tools-wbc --platform local"
    context = Path(str(env["log"]) + ".context").read_text().splitlines()
    for needed in ("./main.py", "./function.yaml", "./function-gpu.yaml",
                   "./cvat-tools/pyproject.toml", "./cvat-tools/cvat_tools/pipeline.py",
                   "./cvat-tools/cvat_tools/serverless.py",
                   "./cvat-tools/cvat_tools/weights/classifier/manifest.json",
                   "./cvat-tools/cvat_tools/weights/segmenter/weights.pt"):
        assert needed in context
    assert not any("__pycache__" in line for line in context)
    # the staged context is removed afterwards
    assert not list(env["tmp"].glob("cvat-tools-nuclio.*"))
    # a second run with the project present does not create it again (idempotent)
    env["log"].unlink()
    result = deploy(env, "--weights", str(env["weights"]), FAKE_PROJECT_EXISTS="1")
    assert result.returncode == 0
    assert not any("create project" in c for c in calls(env))
    assert any(c.startswith("nuctl deploy") for c in calls(env))


def test_version_mismatch_warns(env):
    result = deploy(env, "--dry-run", "--weights", str(env["weights"]), FAKE_NUCTL_VERSION="1.13.0")
    assert result.returncode == 0
    assert "nuctl is 1.13.0 but the Nuclio dashboard is 1.15.9" in result.stderr


def test_kube_and_options(env):
    result = deploy(env, "--dry-run", "--weights", str(env["weights"]), "--platform", "kube",
                    "--project", "wbc", "--registry", "reg.example:5000")
    assert result.returncode == 0, result.stderr
    assert "--project-name wbc" in result.stdout and "--platform kube" in result.stdout
    assert "--registry reg.example:5000" in result.stdout and "platform-config" not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--platform", "swarm"], "--platform must be local or kube"),
    (["--bogus"], "unknown option"),
    (["--weights"], "--weights needs a value"),
    (["--weights", "/nonexistent/dir"], "no such folder"),
])
def test_bad_options(env, args, message):
    result = deploy(env, *args)
    assert result.returncode != 0 and message in result.stderr


def test_weights_without_classifier_is_refused(env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = deploy(env, "--dry-run", "--weights", str(empty))
    assert result.returncode != 0 and "no classifier bundle" in result.stderr


def test_weights_without_segmenter_is_refused_unless_classical_is_asked(env):
    """No silent fallback to the watershed segmenter (issue 19)."""
    shutil.rmtree(env["weights"] / "segmenter")
    result = deploy(env, "--dry-run", "--weights", str(env["weights"]))
    assert result.returncode != 0 and "no segmenter bundle" in result.stderr
    assert "--classical-segmenter" in result.stderr
    result = deploy(env, "--weights", str(env["weights"]), "--classical-segmenter")
    assert result.returncode == 0, result.stderr
    context = (env["log"].parent / "nuctl.log.context").read_text().split()
    assert "./cvat-tools/cvat_tools/weights/segmenter/manifest.json" in context


def test_classical_segmenter_manifest_is_what_the_package_reads():
    import json

    from cvat_tools.bundle import check_manifest, is_classical

    text = DEPLOY.read_text()
    line = next(ln for ln in text.splitlines() if '"architecture": {"name": "classical"}' in ln)
    manifest = json.loads(line[line.index("'{") + 1:line.rindex("}'") + 1])
    assert is_classical(check_manifest(manifest, "deploy.sh"))
