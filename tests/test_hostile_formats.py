"""Hostile inputs to the formats layer (issue 19): each is refused in one line, fast, with
bounded memory, and nothing outside ``--out`` is created or changed."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
from cli_run import run_cli
from cvat_tools.errors import InputError
from cvat_tools.formats import masks
from cvat_tools.formats.safe_names import join_inside, safe_relative, unique_file_names

REPO = Path(__file__).resolve().parents[1]
SECONDS = 5.0
EXTRA_BYTES = 500 * 10**6


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every path under ``root`` (but ``skip``) -> a digest of its content or link target."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            if skip is not None and path == skip:
                continue
            if path.is_symlink():
                state[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                state[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            else:
                state[str(path)] = "dir"
    return state


@pytest.fixture(scope="module", autouse=True)
def _imported():
    """Import what export uses before timing it: first imports under tracemalloc take seconds."""
    import importlib

    for name in ("cvat_tools.commands.export", "cvat_tools.formats.io", "cvat_tools.formats.coco",
                 "cvat_tools.formats.cvat_xml", "cvat_tools.formats.yolo", "cvat_tools.formats.thesis_json",
                 "cvat_tools.formats.labelmap", "cvat_tools.formats.archive", "cvat_tools.formats.clean",
                 "cvat_tools.crops", "cvat_tools.atomic", "shapely.geometry", "shapely.validation",
                 "cv2", "tqdm"):
        importlib.import_module(name)


@pytest.mark.parametrize("case", sorted(hostile.REFUSED))
def test_hostile_input_is_refused_in_one_line(case, tmp_path, monkeypatch):
    build, expected = hostile.REFUSED[case]
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here and be seen
    args = build(tmp_path)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    tracemalloc.start()
    start = time.monotonic()
    try:
        code, stdout, stderr = run_cli("export", *args, "--out", out)
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2, (case, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, stderr[-2000:])
    assert expected in lines[0] and len(lines[0]) < 1000, (case, lines[0][:1000])
    assert "Traceback" not in stderr
    assert elapsed < SECONDS, (case, elapsed)
    assert peak < EXTRA_BYTES, (case, peak)
    assert not out.exists()
    assert snapshot(tmp_path) == before


def test_pixel_limit_message_is_ours_not_pillows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = hostile.image_over_89mp(tmp_path)
    code, _, stderr = run_cli("export", *args, "--out", tmp_path / "out")
    assert code == 2 and "10000x10000 pixels is over the 64 MP limit" in stderr
    assert "89" not in stderr and "178956970" not in stderr


def test_size_limit_message_says_100_mb(tmp_path):
    from cvat_tools.imaging import MAX_FILE_BYTES, load_image

    big = tmp_path / "big.jpg"
    with open(big, "wb") as fh:  # sparse: costs no disk
        fh.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(InputError, match=r"over the 100 MB limit") as info:
        load_image(big)
    assert "105" not in str(info.value)
    assert MAX_FILE_BYTES == 100 * 10**6  # the README's "100 MB"


def test_huge_polygon_is_skipped_fast_and_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = hostile.polygon_500k(tmp_path)
    out = tmp_path / "out"
    start = time.monotonic()
    code, _, stderr = run_cli("export", *args, "--out", out)
    assert time.monotonic() - start < SECONDS
    assert code == 0, stderr
    skipped = json.loads((out / "manifest.json").read_text())["skipped"]
    assert [s["reason"] for s in skipped] == ["polygon with 500000 vertices, over the 20000 limit; "
                                              "simplify it in CVAT"]
    # --strict makes it an error (one vertex over the limit is enough, and quicker to build)
    (tmp_path / "instances_default.json").write_text(hostile._star_coco(20_001))
    code, _, stderr = run_cli("export", *args, "--out", tmp_path / "strict", "--strict")
    assert code == 2 and "20001 vertices" in stderr and not (tmp_path / "strict").exists()


def test_memory_of_the_worst_inputs_in_a_fresh_process(tmp_path):
    """Peak RSS (what the OS sees, C allocations included) over a fresh process's baseline."""
    cases = ["xml_mask_30000", "xml_mask_100000", "coco_rle_quadratic", "coco_rle_many_masks",
             "yolo_alias_bomb", "label_map_alias_bomb", "zip_300_members"]
    runs = []
    for case in cases:
        root = tmp_path / case
        root.mkdir()
        runs.append([str(a) for a in hostile.REFUSED[case][0](root)] + ["--out", str(root / "out")])
    script = (
        "import json, resource, sys\n"
        "from cvat_tools.cli import main\n"
        "import cvat_tools.commands.export, cv2, shapely, tqdm\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "codes = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        main(['export', *args])\n"
        "    except SystemExit as exc:\n"
        "        codes.append(exc.code)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'extra_kb': peak - base, 'codes': codes}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], capture_output=True,
                          text=True, env=env, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == [2] * len(cases), done.stderr[-2000:]
    assert result["extra_kb"] * 1024 < EXTRA_BYTES, result


# --------------------------------------------------------------------------------------------
# names from input files


@pytest.mark.parametrize("name, expected", [
    ("a.jpg", "a.jpg"),
    ("dir/sub/a.jpg", "dir/sub/a.jpg"),
    ("/etc/x/a.jpg", "etc/x/a.jpg"),
    ("../../a.jpg", "a.jpg"),
    ("x/../../y/a.jpg", "y/a.jpg"),
    ("C:\\data\\a.jpg", "data/a.jpg"),
    ("a//b/./c.jpg", "a/b/c.jpg"),
    ("ü/ß é.jpg", "ü/ß é.jpg"),
])
def test_safe_relative_keeps_names_inside(name, expected):
    assert safe_relative(name).as_posix() == expected


@pytest.mark.parametrize("name", ["", "/", "..", "../..", "a\x00.jpg", "a\nb.jpg", "\ud800.jpg", "C:"])
def test_safe_relative_refuses(name):
    with pytest.raises(InputError):
        safe_relative(name)


def test_unique_file_names_never_share_a_stem():
    names = ["x/a.jpg", "y/a.jpg", "a.png", "A.tif", "x__a.jpg", "/etc/passwd", "../passwd", "b" * 400 + ".jpg"]
    out = unique_file_names(names)
    stems = [Path(n).stem.lower() for n in out]
    assert len(set(stems)) == len(names)
    assert all("/" not in n and n not in ("", ".", "..") and len(n.encode()) <= 200 for n in out)
    assert out[-1].endswith(".jpg")


def test_join_inside_refuses_a_link_out(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "out").symlink_to(tmp_path)
    assert join_inside(root, "/sub/a.jpg") == root / "sub" / "a.jpg"
    with pytest.raises(InputError, match="outside"):
        join_inside(root, "sub/out/a.jpg")


_NAME_PART = st.one_of(
    st.sampled_from(["..", ".", "", "/", "\\", "C:", "a.png", "etc", "~", "..\\..", "out", "images",
                     "a\x00", "\n", "\ud800"]),
    # printable unicode mostly, so that most names get as far as writing
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12),
)
_NAME = st.lists(_NAME_PART, min_size=1, max_size=6).map(lambda parts: "/".join(parts))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(names=st.lists(_NAME, min_size=1, max_size=3), tail=st.booleans())
def test_export_never_writes_outside_out_for_any_image_name(tmp_path_factory, names, tail):
    """Random image names (absolute, ``..``, backslashes, unicode, control characters): export
    either refuses (exit 2) or writes, but only under --out."""
    root = tmp_path_factory.mktemp("prop")
    images = root / "images"
    hostile.tiny_png(images / "a.png")
    (root / "victim").mkdir()
    (root / "victim" / "a.png").write_bytes(b"user file")
    names = [n + "/a.png" if tail else n for n in names]
    names += [str(root / "victim" / "a.png")]  # an absolute name pointing at a user file
    doc = hostile.coco_doc(
        [{"id": k, "file_name": n, "width": 8, "height": 8} for k, n in enumerate(names, 1)],
        [{"id": k, "image_id": k, "category_id": 1, "segmentation": [[1, 1, 6, 1, 6, 6]]}
         for k in range(1, len(names) + 1)])
    ann = root / "ann.json"
    ann.write_text(json.dumps(doc))
    out = root / "out"
    top_before = set(os.listdir("/"))
    before = snapshot(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code, _, stderr = run_cli("export", ann, "--images", images, "--out", out)
    finally:
        os.chdir(cwd)
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr
    assert snapshot(root, skip=out) == before
    assert set(os.listdir("/")) == top_before
    if code == 0:
        written = [p for p in out.rglob("*")]
        assert all(out in p.parents for p in written)
        assert len(list((out / "images").iterdir())) == len(names)


# --------------------------------------------------------------------------------------------
# decoders


def test_coco_string_decoder_is_linear_and_bounded():
    start = time.monotonic()
    with pytest.raises(ValueError, match="implausibly long"):
        masks._coco_string_to_counts("o" * (640 * 1024) + "0")
    with pytest.raises(ValueError, match="over the limit"):
        masks._coco_string_to_counts("1" * 1000, size=10)
    # a real 1-million-run mask string decodes in well under a second
    bitmap = (np.arange(2000 * 1000).reshape(1000, 2000) % 2).astype(bool)
    rle = masks.coco_rle_encode(bitmap)
    assert np.array_equal(masks.coco_rle_decode(rle), bitmap)
    assert time.monotonic() - start < SECONDS


@pytest.mark.parametrize("text", [f"{2**64}, 1", "-1, 5", "1,,3", "3; 1", "1 2", "0x4", "\u0663, 1"])
def test_cvat_rle_text_is_refused_not_overflowed(text):
    with pytest.raises(ValueError):
        masks.parse_runs(text, 4)


def test_cvat_rle_over_the_mask_size_is_refused_before_decoding():
    with pytest.raises(ValueError, match="runs"):
        masks.parse_runs(", ".join(["1"] * 10), 4)
    with pytest.raises(ValueError, match="over the mask size"):
        masks.cvat_rle_decode(np.array([10**14], dtype=np.int64), 2, 2)


def test_cvat_zip_naming_paths_outside_writes_only_under_out(tmp_path, monkeypatch):
    """The zip-carried form of item 2: XML image names absolute and with ``..``, colliding on
    their base name (the collision path once joined the parts into '/__...'), images inside."""
    import zipfile

    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim" / "a.png"
    victim.parent.mkdir()
    victim.write_bytes(b"user file")
    names = [str(victim), "../../victim/a.png", "images/a.png", "..\\..\\victim\\a.png"]
    body = "".join(f'<image id="{k}" name="{n}" width="8" height="8">'
                   '<polygon label="neutrophil" points="1,1;6,1;6,6"/></image>' for k, n in enumerate(names))
    png = hostile.tiny_png(tmp_path / "src" / "a.png").read_bytes()
    archive = tmp_path / "task.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", f"<annotations>{body}</annotations>")
        zf.writestr("images/a.png", png)
    top_before = set(os.listdir("/"))
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    code, _, stderr = run_cli("export", archive, "--out", out)
    assert code == 0, stderr
    assert snapshot(tmp_path, skip=out) == before
    assert set(os.listdir("/")) == top_before
    written = sorted(p.name for p in (out / "images").iterdir())
    assert len(written) == 4 and all("/" not in n and ".." not in n.split("__") for n in written)
    stems = {Path(n).stem for n in written}
    assert len(list((out / "masks").iterdir())) == 4 and len(stems) == 4


def test_training_reader_keeps_coco_file_names_inside_the_folder(tmp_path):
    from cvat_tools.data.fields import read_coco

    folder = tmp_path / "train"
    (folder / "images").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"not yours")
    doc = hostile.coco_doc([{"id": 1, "file_name": "../../secret.png", "width": 8, "height": 8},
                            {"id": 2, "file_name": str(tmp_path / "secret.png"), "width": 8, "height": 8}], [])
    (folder / "annotations.json").write_text(json.dumps(doc))
    samples = read_coco(folder)
    assert [s.image for s in samples] == [folder / "secret.png", folder / str(tmp_path / "secret.png").lstrip("/")]
    (folder / "annotations.json").write_text("[" * 10_000 + "]" * 10_000)
    with pytest.raises(InputError, match="nested too deeply"):
        read_coco(folder)
    doc["images"] = [{"id": 1, "file_name": "a.png", "width": 100_000, "height": 100_000}]
    (folder / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="64 MP limit"):
        read_coco(folder)


def test_training_recipe_alias_bomb_is_refused(tmp_path):
    from cvat_tools.train.recipe import load_recipe
    from cvat_tools.train.segmentation import SegTrainConfig

    bomb = tmp_path / "recipe.yaml"
    bomb.write_text(hostile._alias_bomb())
    start = time.monotonic()
    with pytest.raises(InputError, match="alias"):
        load_recipe(bomb, SegTrainConfig)
    assert time.monotonic() - start < SECONDS
