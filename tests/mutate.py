"""Mutation check: plant each known bug in a temporary copy of the repository and confirm that
the named tests fail. The working tree is never modified.

    python3 tests/mutate.py             # every mutation (about 1-2 minutes on 2 idle cores)
    python3 tests/mutate.py rule paste  # only these (ids below)
    python3 tests/mutate.py --list

For each mutation the named tests are first run on the unmutated copy (they must pass), then
on the copy with the bug planted (they must fail). Exit code 0 when every bug is caught; 1 when
one survives or its source line is gone (the code changed: update MUTATIONS). The table is
tests/mutations.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    bug: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    optional: bool = False  # the file may not exist yet (work merged later): then not counted


MUTATIONS = [
    Mutation(
        "handler-threshold", "the Nuclio request's threshold ignored (handler runs at the default)",
        "cvat_tools/serverless.py",
        "context.user_data.pipeline.run(frame.image, threshold=threshold)",
        "context.user_data.pipeline.run(frame.image)",
        ("tests/test_serverless.py::test_handler_honours_the_request_threshold",),
    ),
    Mutation(
        "conf-threshold", "cvat_function ignores conf_threshold (always the default 0.5)",
        "cvat_tools/cvat_function.py",
        "self.pipeline.run(rgb, threshold=float(threshold))",
        "self.pipeline.run(rgb, threshold=DEFAULT_THRESHOLD)",
        ("tests/test_cvat_function.py::test_detect_honours_conf_threshold",
         "tests/test_cvat_function.py::test_annotate_uploads_pipeline_output_at_its_threshold"),
    ),
    Mutation(
        "labels-json-text", "labels.json attribute types forced to \"text\" (predict.py)",
        "cvat_tools/commands/predict.py",
        '"input_type": a.input_type',
        '"input_type": "text"',
        ("tests/test_cvat_function.py::test_labels_json_declares_the_functions_attribute_types",
         "tests/test_cvat_function.py::test_detect_honours_conf_threshold"),
    ),
    Mutation(
        "atomic-finally", "atomic_path publishes on exception (os.replace moved into finally)",
        "cvat_tools/atomic.py",
        "        yield tmp_path\n        os.replace(tmp_path, target)\n    finally:\n",
        "        yield tmp_path\n    finally:\n        os.replace(tmp_path, target)\n",
        ("tests/test_atomic.py",),
    ),
    Mutation(
        "rule-boundary", "rule.refiner_confident boundary >= turned into >",
        "cvat_tools/classify/rule.py",
        "r.score >= refiner_confident",
        "r.score > refiner_confident",
        ("tests/test_rule_boundaries.py::test_refiner_confident_is_at_least_not_above",),
    ),
    Mutation(
        "paste-shift", "pasted mask shifted by 1 px (segment/base.py paste_mask)",
        "cvat_tools/segment/base.py",
        "fx0 + int(tx0), fy0 + int(ty0))",
        "fx0 + int(tx0) + 1, fy0 + int(ty0))",
        ("tests/test_segment_paste.py",),
    ),
    Mutation(
        "tile-offset", "a tile's mask pasted 1 working px off (segment/tiling.py)",
        "cvat_tools/segment/tiling.py",
        "offset=(t.x0 - px, t.y0 - py)",
        "offset=(t.x0 - px + 1, t.y0 - py)",
        ("tests/test_segment_paste.py::test_segmenter_returns_the_cell_on_its_full_resolution_pixels",),
        optional=True,
    ),
    # beyond the six: the other boundaries the suite now pins
    Mutation(
        "review-boundary", "needs_review at a final score equal to the threshold (< turned into <=)",
        "cvat_tools/pipeline.py",
        "float(decision.score) < review_threshold",
        "float(decision.score) <= review_threshold",
        ("tests/test_rule_boundaries.py::test_review_flag_boundary_is_below_not_at",),
    ),
    Mutation(
        "pipeline-threshold", "Pipeline.run drops a detection scoring exactly the threshold",
        "cvat_tools/pipeline.py",
        "if d.score >= threshold and",
        "if d.score > threshold and",
        ("tests/test_rule_boundaries.py::test_pipeline_threshold_keeps_a_score_equal_to_it",),
    ),
]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, check=True, capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p and (REPO / p).is_file()]


def copy_repo(dest: Path) -> None:
    for rel in tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)


def run_tests(root: Path, tests: tuple[str, ...], data: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(root), CVAT_TOOLS_DATA=data,
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("CVAT_TOOLS_REQUIRE_DATA", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *tests], cwd=root, env=env, capture_output=True, text=True)
    lines = [l for l in (proc.stdout + proc.stderr).strip().splitlines() if l.strip()]
    return proc.returncode, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="mutation ids (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.ids or m.id in args.ids]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.id:20s} {m.path}: {m.bug}\n{'':20s} caught by {', '.join(m.tests)}")
        return 0 if chosen or args.list else 2
    data = os.environ.get("CVAT_TOOLS_DATA", str(REPO.parent / "shared" / "data"))
    survived: list[str] = []
    skipped = 0
    with tempfile.TemporaryDirectory(prefix="cvat-tools-mutate-") as tmp:
        root = Path(tmp) / "repo"
        copy_repo(root)
        probe = subprocess.run([sys.executable, "-c", "import cvat_tools; print(cvat_tools.__file__)"],
                               cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                               capture_output=True, text=True).stdout.strip()
        assert probe.startswith(str(root)), f"the copy does not import its own package: {probe}"
        skipped = 0
        for m in chosen:
            path = root / m.path
            if m.optional and not path.exists():
                print(f"[{m.id}] absent: {m.path} is not in this tree (optional)")
                skipped += 1
                continue
            original = path.read_text()
            count = original.count(m.old)
            if count != 1:
                print(f"[{m.id}] STALE: {m.path} holds the mutated line {count} times "
                      f"(expected once); update tests/mutate.py")
                survived.append(m.id)
                continue
            code, last = run_tests(root, m.tests, data)
            if code != 0:
                print(f"[{m.id}] BROKEN: the tests fail without the bug: {last}")
                survived.append(m.id)
                continue
            path.write_text(original.replace(m.old, m.new))
            try:
                code, last = run_tests(root, m.tests, data)
            finally:
                path.write_text(original)
            caught = code != 0
            print(f"[{m.id}] {'caught' if caught else 'SURVIVED'}: {m.bug} -> {last}")
            if not caught:
                survived.append(m.id)
    print(f"{len(chosen) - skipped - len(survived)} of {len(chosen) - skipped} mutations caught"
          + (f"; not caught: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
