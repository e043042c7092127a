"""`cvat-tools adapt` (issue 17): which shapes count, the hold-out, bad input refused before any
training with nothing written, and one tiny end-to-end run (real BCCD fields and masks, a
tiny PBC source, 1 training step) whose weights folder predict and the cvat-sdk function load.
"""
from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cli_run import run_cli
from conftest import REPO
from cvat_tools.adapt import corrections, cutting, holdout
from cvat_tools.formats.annotations import Box, Dataset, ImageAnnotation, Instance, Mask, Polygon

sys.path.insert(0, str(REPO / "benchmarks"))
import adapt_curve  # noqa: E402  (the benchmark's task writer: one way to build a corrected task)

TINY = ["--steps", "1", "--batch-size", "4", "--threads", "1"]


@pytest.fixture(scope="session")
def bccd_pool(bccd_dir):
    return [c for c in adapt_curve.lab_cells(bccd_dir, "bccd") if c["split"] == "train"]


@pytest.fixture(scope="session")
def task_xml(tmp_path_factory, bccd_pool):
    """3 corrected cells per class (the first one a box) + 4 untouched auto shapes."""
    manual = adapt_curve.draw(bccd_pool, 12, seed=0)
    chosen = {id(c) for c in manual}
    auto = [c for c in bccd_pool if id(c) not in chosen][:4]
    path = tmp_path_factory.mktemp("adapt_task") / "task.xml"
    return adapt_curve.write_task(manual, auto, path, box=1)


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory, pbc_dir):
    """3 PBC images of each refiner class as a crops folder (the trainer's other source kind)."""
    from cvat_tools.data import cells as D

    root = tmp_path_factory.mktemp("tiny_pbc")
    for label in corrections.REFINER_CLASSES:
        (root / label).mkdir()
        for s in [s for s in D.pbc_samples(pbc_dir, [label])][:3]:
            shutil.copy(s.path, root / label / s.path.name)
    return root


@pytest.fixture(scope="session")
def adapted(tmp_path_factory, task_xml, tiny_source, bccd_dir):
    out = tmp_path_factory.mktemp("adapt_out") / "weights"
    code, stdout, stderr = run_cli("adapt", task_xml, "--images", bccd_dir / "images", "--out", out,
                                   "--source", tiny_source, "--force", *TINY)
    assert code == 0, stderr
    return out, stdout


def _refused(args, out: Path) -> str:
    code, stdout, stderr = run_cli("adapt", *args, "--out", out, *TINY)
    assert code == 2, stdout + stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*")), "something was written"
    return stderr


# -- which shapes count --------------------------------------------------------------------


def _inst(label, source):
    return Instance(label, Polygon([(1, 1), (9, 1), (9, 9)]), source=source)


def test_corrected_sources_count_and_auto_does_not():
    image = ImageAnnotation("a.png", 20, 20, [
        _inst("neutrophil", "manual"), _inst("neutrophil", "semi-auto"), _inst("monocyte", "file"),
        _inst("monocyte", "auto"), _inst("band cell", "manual"), _inst("lymphocyte", "AUTO")])
    sel = corrections.select(Dataset([image]))
    assert [c.index for c in sel.cells] == [0, 1, 2]
    assert sel.counts() == {"monocyte": 1, "neutrophil": 2}
    assert sorted(c.index for c in sel.unlabelled) == [3, 4, 5]  # the lab's other cells
    reasons = sel.left_out_summary()
    assert reasons[next(r for r in reasons if r.startswith("auto"))] == 2
    assert any(r.startswith("band cell: not one of the refiner's classes") for r in reasons)
    with_auto = corrections.select(Dataset([image]), include_auto=True)
    assert with_auto.counts() == {"lymphocyte": 1, "monocyte": 2, "neutrophil": 2}


def test_a_class_with_one_cell_is_refused_naming_it():
    image = ImageAnnotation("a.png", 20, 20, [_inst("neutrophil", "manual"), _inst("neutrophil", "manual"),
                                              _inst("monocyte", "manual")])
    with pytest.raises(Exception, match=r"monocyte \(1 cell\).*'monocyte: null'"):
        corrections.check(corrections.select(Dataset([image])), "t.xml")


def test_holdout_is_stratified_seeded_and_disjoint():
    keys = {"neutrophil": [f"n{i}" for i in range(10)], "monocyte": ["m0", "m1"], "eosinophil": list("abcde")}
    train, held = holdout.split(keys, seed=3)
    assert not set(train) & set(held) and len(train) + len(held) == 17
    assert sum(k.startswith("n") for k in held) == 2 and sum(k.startswith("m") for k in held) == 1
    assert sum(k in "abcde" for k in held) == 1
    assert holdout.split({k: v[::-1] for k, v in keys.items()}, seed=3) == (train, held)  # order-free
    assert any(holdout.split(keys, seed=s)[1] != held for s in range(4, 10))


def test_box_takes_the_detection_inside_it_clipped():
    bitmap = np.zeros((30, 30), bool)
    bitmap[5:25, 5:25] = True
    other = np.zeros((30, 30), bool)
    other[0:4, 0:4] = True
    dets = [SimpleNamespace(mask=Mask(other)), SimpleNamespace(mask=Mask(bitmap[5:25, 5:25], 5, 5))]
    mask = cutting.box_mask(Box(10, 10, 30, 30), dets, 30, 30)
    assert (mask.left, mask.top, mask.bitmap.shape, int(mask.bitmap.sum())) == (10, 10, (20, 20), 225)
    assert cutting.box_mask(Box(26, 26, 30, 30), dets, 30, 30) is None  # nothing inside: left out


# -- bad input: refused before training, nothing written ---------------------------------------


def _xml_with(tmp_path, bccd_pool, labels_sources, name="t.xml"):
    """A task over real BCCD cells with the given (label, source) per shape."""
    cells = [dict(c, label=lab) for c, (lab, _) in zip(bccd_pool, labels_sources)]
    manual = [c for c, (_, s) in zip(cells, labels_sources) if s == "manual"]
    auto = [c for c, (_, s) in zip(cells, labels_sources) if s == "auto"]
    return adapt_curve.write_task(manual, auto, tmp_path / name)


def test_no_corrected_shapes(tmp_path, bccd_pool, bccd_dir):
    xml = _xml_with(tmp_path, bccd_pool, [("neutrophil", "auto")] * 4)
    err = _refused([xml, "--images", bccd_dir / "images"], tmp_path / "w")
    assert "no corrected shapes" in err and "4 x auto shape" in err


def test_one_cell_class(tmp_path, bccd_pool, bccd_dir):
    xml = _xml_with(tmp_path, bccd_pool, [("neutrophil", "manual")] * 2 + [("monocyte", "manual")])
    assert "monocyte (1 cell)" in _refused([xml, "--images", bccd_dir / "images"], tmp_path / "w")


def test_unmapped_labels_are_listed_and_the_map_fixes_them(tmp_path, bccd_pool, bccd_dir):
    text = _xml_with(tmp_path, bccd_pool, [("neutrophil", "manual")] * 3).read_text()
    xml = tmp_path / "odd.xml"
    xml.write_text(text.replace("<name>neutrophil</name>", "<name>Seg Neu</name>")
                   .replace('label="neutrophil"', 'label="Seg Neu"'))
    err = _refused([xml, "--images", bccd_dir / "images"], tmp_path / "w")
    assert "'Seg Neu' (3 shapes)" in err and "--label-map" in err
    mapping = tmp_path / "map.yaml"
    mapping.write_text("Seg Neu: neutrophil\n")
    (tmp_path / "empty").mkdir()
    err = _refused([xml, "--images", tmp_path / "empty", "--label-map", mapping], tmp_path / "w")
    assert "Seg Neu" not in err and "not found" in err  # mapped: the next check speaks


def test_missing_frames(tmp_path, task_xml):
    (tmp_path / "empty").mkdir()
    err = _refused([task_xml, "--images", tmp_path / "empty"], tmp_path / "w")
    assert "annotated image(s) not found" in err and "--images" in err


def test_segmenter_is_refused_as_not_built(tmp_path, task_xml, bccd_dir):
    err = _refused([task_xml, "--images", bccd_dir / "images", "--segmenter"], tmp_path / "w")
    assert "not built yet" in err


def test_silent_server_times_out(tmp_path, monkeypatch):
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "tok-s3cret")
    with socket.socket() as sock:  # accepts, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        start = time.monotonic()
        err = _refused(["--host", f"http://127.0.0.1:{sock.getsockname()[1]}", "--task", "5",
                        "--timeout", "1"], tmp_path / "w")
    assert "did not answer within 1 s" in err and "s3cret" not in err
    assert time.monotonic() - start < 15


# -- reading a CVAT task through cvat-sdk (a fake client with the SDK's own models) ------------


def _fake_client(bccd_dir, bccd_pool, exists=True):
    from cvat_sdk.api_client import models
    from cvat_sdk.exceptions import ApiException

    from cvat_tools.formats.masks import encode_mask_crop, mask_to_polygons

    cells = adapt_curve.draw(bccd_pool, 8, seed=1)
    frames = [SimpleNamespace(name=c["name"], width=640, height=480) for c in cells]
    shapes = []
    for k, c in enumerate(cells):
        label_id = 10 + adapt_curve.CLASSES.index(c["label"])
        source = "auto" if k == 7 else "manual"
        if k % 2:
            from cvat_tools.formats.masks import mask_from_bitmap
            points = encode_mask_crop(mask_from_bitmap(c["mask"]), 640, 480)
            kind = "mask"
        else:
            points = [v for xy in mask_to_polygons(c["mask"], 0, 0)[0] for v in xy]
            kind = "polygon"
        shapes.append(models.LabeledShape._from_openapi_data(
            type=models.ShapeType(kind), frame=k, label_id=label_id, points=[float(v) for v in points],
            source=source, occluded=False, z_order=0, attributes=[]))
    task = SimpleNamespace(
        get_labels=lambda: [SimpleNamespace(id=10 + i, name=n) for i, n in enumerate(adapt_curve.CLASSES)],
        get_meta=lambda: SimpleNamespace(frames=frames),
        get_annotations=lambda: SimpleNamespace(shapes=shapes, tracks=[]),
        get_frame=lambda i, quality=None: open(cells[i]["image"], "rb"))

    def retrieve(task_id):
        if not exists:
            raise ApiException(status=404, reason="Not Found")
        return task

    client = SimpleNamespace(tasks=SimpleNamespace(retrieve=retrieve))
    return SimpleNamespace(client=client, cells=cells)


class _Ctx:
    def __init__(self, client):
        self.tasks = client.tasks

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_task_shapes_and_frames_are_read(monkeypatch, bccd_dir, bccd_pool):
    from cvat_tools.adapt import cvat_task
    from cvat_tools.commands import annotate

    fake = _fake_client(bccd_dir, bccd_pool)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "t")
    monkeypatch.setattr(annotate, "connect", lambda host, login, timeout=None: _Ctx(fake.client))
    with cvat_task.open_task_input("http://cvat:8080", [4], 5.0, None) as (dataset, frames, where):
        sel = corrections.select(dataset)
        assert [c.label for c in sel.cells] == [c["label"] for c in fake.cells[:7]]
        assert [c.image for c in sel.unlabelled] == [f"task4/{fake.cells[7]['name']}"]
        first = dataset.images[0]
        assert first.name == f"task4/{fake.cells[0]['name']}" and isinstance(first.instances[0].geometry, Polygon)
        assert isinstance(dataset.images[1].instances[0].geometry, Mask)
        assert dataset.images[1].instances[0].geometry.bitmap.sum() == fake.cells[1]["mask"].sum()
        assert frames.load(first.name).shape == (480, 640, 3)
        assert f"task4/{fake.cells[7]['name']}" not in frames.data  # auto-only frame: not fetched


def test_a_task_that_does_not_exist(monkeypatch, tmp_path, bccd_dir, bccd_pool):
    from cvat_tools.commands import annotate

    fake = _fake_client(bccd_dir, bccd_pool, exists=False)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "t")
    monkeypatch.setattr(annotate, "connect", lambda host, login, timeout=None: _Ctx(fake.client))
    err = _refused(["--host", "http://cvat:8080", "--task", "99"], tmp_path / "w")
    assert "has no task 99 (HTTP 404)" in err


# -- the end-to-end run ------------------------------------------------------------------------


def test_output_is_a_complete_weights_folder_with_provenance(adapted, shipped_paths):
    from cvat_tools.bundle import load_bundle, read_manifest

    out, stdout = adapted
    for kind in ("segmenter", "classifier", "refiner"):
        load_bundle(out / kind, kind=kind)  # checksums and label bindings hold
    record = json.loads((out / "adapt.json").read_text())
    assert record["counts"] == {"eosinophil": 3, "lymphocyte": 3, "monocyte": 3, "neutrophil": 3}
    assert record["left_out"] == {"auto shape nobody edited (--include-auto counts it)": 4}
    held = record["holdout"]["cells"]
    assert len(held) == 4 and not set(held) & set(record["train_cells"])  # one per class held out
    for kind in ("segmenter", "classifier", "refiner"):
        assert record["parent"][kind]["weights_sha256"] == read_manifest(shipped_paths[kind])["weights"]["sha256"]
    assert read_manifest(out / "classifier")["weights"]["sha256"] == record["parent"]["classifier"]["weights_sha256"]
    assert read_manifest(out / "refiner")["weights"]["sha256"] != record["parent"]["refiner"]["weights_sha256"]
    metrics = record["metrics"]
    assert metrics["held_out_before"]["n"] == metrics["held_out_after"]["n"] == 4
    refiner = read_manifest(out / "refiner")
    assert refiner["adapt"]["holdout"]["cells"] == held
    # trained on the 8 training corrections only (held-out cells never reach the trainer), and
    # DANN saw those 8 + the 4 auto cells unlabelled
    assert refiner["training"]["data"]["labelled_target_crops"] == 8
    assert list(refiner["training"]["data"]["targets"].values()) == [12]
    assert "macro-F1" in stdout and "monocyte" in stdout and not (out / ".work").exists()


def test_predict_and_the_cvat_sdk_function_take_the_output(adapted, tmp_path, bccd_dir):
    from cvat_tools import cvat_function

    out, _ = adapted
    image = bccd_dir / "images" / "BloodImage_00002.jpg"
    code, stdout, stderr = run_cli("predict", image, "--weights", out, "--out", tmp_path / "p")
    assert code == 0, stderr
    models = json.loads((tmp_path / "p" / "predict.json").read_text())["models"]
    assert models["refiner"] == str(out / "refiner") and models["segmenter"] == str(out / "segmenter")
    function = cvat_function.create(weights=str(out))
    assert function.pipeline.info.refiner == str(out / "refiner")


def test_a_worse_result_is_refused_and_nothing_is_written(monkeypatch, tmp_path, task_xml, tiny_source,
                                                          bccd_dir):
    from cvat_tools.adapt import run as adapt_run

    from cvat_tools.metrics.classification import classification_report

    calls = []

    def before_right_after_wrong(classifier, refiner, cells):
        """The parent names every held-out cell right, the adapted model none (4 classes)."""
        truth = [c.cell.label for c in cells]
        calls.append(len(cells))
        order = sorted(set(truth))
        predicted = truth if len(calls) == 1 else [order[(order.index(t) + 1) % len(order)] for t in truth]
        return classification_report(truth, predicted, order)

    monkeypatch.setattr(adapt_run.scoring, "score_cells", before_right_after_wrong)
    out = tmp_path / "w"
    code, stdout, stderr = run_cli("adapt", task_xml, "--images", bccd_dir / "images", "--out", out,
                                   "--source", tiny_source, *TINY)
    assert code == 2 and "worse on the 4 held-out corrections" in stderr and "--force" in stderr
    assert "1.000 -> 0.000" in stdout and calls == [4, 4]
    assert not out.exists() and not list(tmp_path.glob(".w.*"))


def test_nuclio_env_and_deploy_take_the_output(adapted, monkeypatch, tmp_path):
    """CVAT_TOOLS_WEIGHTS (the Nuclio function) loads it; deploy.sh bakes its three bundles in."""
    import subprocess

    from cvat_tools import serverless
    from test_deploy import FAKE_NUCTL

    out, _ = adapted
    monkeypatch.setenv(serverless.ENV_WEIGHTS, str(out))
    for name in (serverless.ENV_SEGMENTER, serverless.ENV_CLASSIFIER, serverless.ENV_REFINER):
        monkeypatch.delenv(name, raising=False)
    assert serverless.load_pipeline_from_env().info.refiner == str(out / "refiner")
    nuctl = tmp_path / "bin" / "nuctl"
    nuctl.parent.mkdir()
    nuctl.write_text(FAKE_NUCTL)
    nuctl.chmod(0o755)
    log = tmp_path / "nuctl.log"
    env = {"PATH": f"{nuctl.parent}:/usr/bin:/bin", "NUCTL_LOG": str(log), "HOME": str(tmp_path),
           "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(REPO / "deploy.sh"), "--weights", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    context = Path(str(log) + ".context").read_text().splitlines()
    for kind in ("segmenter", "classifier", "refiner"):
        assert f"./cvat-tools/cvat_tools/weights/{kind}/weights.pt" in context
    assert "no refiner bundle" not in done.stderr


@pytest.mark.parametrize("fmt", ["coco", "zip"])
def test_coco_and_export_zip_count_the_same_cells(fmt, tmp_path, task_xml, bccd_dir):
    """Anything export reads: the same task as COCO, or zipped as CVAT exports it, gives the
    same corrections (sources kept) and finds its frames."""
    import zipfile

    from cvat_tools.adapt.frames import open_file_input
    from cvat_tools.formats.io import read_annotations, write_annotations

    dataset = read_annotations(task_xml)
    if fmt == "coco":
        path = write_annotations(dataset, tmp_path / "instances_default.json", "coco")
    else:
        path = tmp_path / "task.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.write(task_xml, "annotations.xml")
    expected = corrections.select(dataset)
    with open_file_input(path, bccd_dir / "images", None) as (got, frames, _):
        sel = corrections.select(got)
        assert sel.counts() == expected.counts() == {c: 3 for c in adapt_curve.CLASSES}
        assert len(sel.unlabelled) == len(expected.unlabelled) == 4
        assert sum(c.is_box for c in sel.cells) == 1
        assert all(c.image in frames.paths for c in sel.cells)
