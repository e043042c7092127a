"""Grad-CAM per cell (cvat_tools/explain/, ``cvat-tools explain``, ``predict --explain``).

The maps must light what drives the answer: a tiny CNN trained here on images whose label
depends on one region only, and the shipped models on a real PBC image (the map's mass lies
mostly inside the cell mask).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

from cli_run import run_cli
from conftest import need_shipped
from pipeline_fakes import GridSegmenter, shared_weights

from cvat_tools.explain.gradcam import (Explainer, grad_cam, last_conv_block, mass_inside,
                                        upsample)

SIDE, PATCH = 32, 8


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Images with one 8x8 patch at a random place: a checkerboard (class 1) or a plain bright
    square (class 0) on noise. Only the patch tells the class. Returns x, y, patch masks."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 3, SIDE, SIDE)).astype(np.float32)
    y = rng.integers(0, 2, n)
    where = np.zeros((n, SIDE, SIDE), bool)
    checker = np.indices((PATCH, PATCH)).sum(0) // 2 % 2 * 2.0 - 1.0
    for i in range(n):
        r, c = rng.integers(0, SIDE - PATCH, 2)
        x[i, :, r:r + PATCH, c:c + PATCH] = checker if y[i] else 1.0
        where[i, r:r + PATCH, c:c + PATCH] = True
    return torch.from_numpy(x), torch.from_numpy(y), where


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny_cnn():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add synchronisation
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        x, y, _ = _synthetic(32, seed=step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    model.eval()
    x, y, where = _synthetic(200, seed=10_000)  # held out: seeds never used in training
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.95, f"the tiny CNN did not learn the task ({accuracy:.2f}); the map test would mean nothing"
    return model, x, y, where


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_map_lights_the_region_that_decides_the_label(tiny_cnn, method):
    model, x, y, where = tiny_cnn
    logits, maps = grad_cam(model, model.body[4], x, method=method)
    heat = upsample(maps, SIDE)
    assert heat.shape == (len(x), SIDE, SIDE) and heat.max() <= 1.0 + 1e-6
    # the map is 16 x 16 upsampled and the last conv sees 3 px past the patch: 2 px of margin
    near = np.array([_dilate(w) for w in where])
    inside = np.array([mass_inside(h, w) for h, w in zip(heat, near)])
    area = near.mean()  # 14 % of the image: what a map blind to the patch gets
    assert inside.mean() > 0.5, f"{method}: only {inside.mean():.2f} of the mass near the patch"
    assert inside.mean() > 3.5 * area
    assert np.mean([mass_inside(h, w) for h, w in zip(heat, where)]) > 4 * where.mean()
    peaks = [w.flat[int(h.argmax())] for h, w in zip(heat, near)]
    assert np.mean(peaks) > 0.85
    assert torch.equal(logits.argmax(1), model(x).argmax(1))


def test_map_follows_the_asked_class(tiny_cnn):
    """Explaining the other class of a checkerboard image must not light the checkerboard
    as strongly: the map depends on the answer explained, not only on the image."""
    model, x, y, where = tiny_cnn
    ones = (y == 1).numpy()
    _, own = grad_cam(model, model.body[4], x[ones], choose=lambda lg: torch.ones(len(lg), dtype=torch.long))
    _, other = grad_cam(model, model.body[4], x[ones], choose=lambda lg: torch.zeros(len(lg), dtype=torch.long))
    own_in = np.mean([mass_inside(h, _dilate(w)) for h, w in zip(upsample(own, SIDE), where[ones])])
    other_raw = float((other.flatten(1).sum(1) / own.flatten(1).sum(1).clamp(min=1e-9)).mean())
    assert own_in > 0.5 and other_raw < 0.5, (own_in, other_raw)


def _dilate(mask: np.ndarray, by: int = 2) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * by + 1, 2 * by + 1), np.uint8)) > 0


def test_explainer_answers_are_the_models_predictions(shipped_classifier, bccd_dir):
    from cvat_tools.data.cells import bccd_crops

    crops = [c.crop for c in bccd_crops(bccd_dir, size=shipped_classifier.input_size)[:6]]
    explained = Explainer(shipped_classifier).explain(crops, batch_size=4)
    predicted = shipped_classifier.predict(crops)
    assert [e.prediction.label for e in explained] == [p.label for p in predicted]
    assert np.allclose([e.prediction.score for e in explained], [p.score for p in predicted], atol=1e-5)
    assert all(e.heat.shape == (shipped_classifier.input_size,) * 2 for e in explained)
    assert all(0.99 <= e.heat.max() <= 1.0 for e in explained)


def test_a_network_without_a_conv_head_is_refused():
    from cvat_tools.errors import BundleError

    with pytest.raises(BundleError, match="not an EfficientNet classifier"):
        last_conv_block(TinyCNN())


# -- real cells through the Pipeline ------------------------------------------------------------


@pytest.fixture(scope="module")
def pbc_cells(shipped_segmenter, shipped_classifier, shipped_refiner_path, pbc_dir):
    """The shipped models explaining the first two images of the classifier's PBC test split
    (not picked for their maps)."""
    from cvat_tools.classify.dann import Refiner
    from cvat_tools.explain.cells import explain_image, explainers
    from cvat_tools.imaging import load_image
    from cvat_tools.pipeline import Pipeline
    from cvat_tools.data.cells import split_from_manifest

    refiner = Refiner.from_bundle(shipped_refiner_path, classifier_labels=shipped_classifier.labels)
    pipeline = Pipeline(shipped_segmenter, shipped_classifier, refiner)
    files = shipped_classifier.manifest["split"]["files"]
    images = [load_image(s.path) for s in split_from_manifest(files, pbc_dir, "test")[:2]]
    return pipeline, images, [explain_image(pipeline, explainers(pipeline), im) for im in images]


def test_real_pbc_maps_lie_mostly_inside_the_cell(pbc_cells):
    """The classifier's map of the centre cell: more than half its mass inside the mask, and
    more than the mask's share of the crop. (The refiner's maps spread more, to the crop's
    corners: about half their mass is inside; the note of this branch gives the numbers.)"""
    _, images, per_image = pbc_cells
    for image, cells in zip(images, per_image):
        h, w = image.shape[:2]
        # the centre cell: the one whose box holds the image centre
        centre = [c for c in cells if c.instance.geometry.left <= w / 2 <= c.instance.geometry.left
                  + c.instance.geometry.width and c.instance.geometry.top <= h / 2
                  <= c.instance.geometry.top + c.instance.geometry.height]
        assert len(centre) == 1
        cell = centre[0]
        clf = cell.answers[0]
        assert clf.name == "classifier" and [a.name for a in cell.answers] == ["classifier", "refiner"]
        assert clf.in_mask > 0.5, f"classifier heat {clf.in_mask:.2f} inside the mask"
        assert clf.in_mask > cell.mask.mean()  # better than a map spread evenly over the crop
        assert clf.in_mask == pytest.approx(mass_inside(clf.explanation.heat, cell.mask))


def test_explained_instances_are_what_run_gives(pbc_cells):
    pipeline, images, per_image = pbc_cells
    instances = pipeline.run(images[0])
    got = [c.instance for c in per_image[0]]
    assert [i.label for i in got] == [i.label for i in instances]
    assert [i.attributes for i in got] == [i.attributes for i in instances]
    assert all(np.array_equal(a.geometry.bitmap, b.geometry.bitmap) for a, b in zip(got, instances))


def test_crop_mask_lines_up_with_the_crop(pbc_cells):
    """The mask tile is the detection's mask cut by the same cell_crop: outside it the crop is
    the background grey."""
    from cvat_tools.crops import BACKGROUND

    for cells in pbc_cells[2]:
        for cell in cells:
            # resizing blends a rim of the mask's edge with the grey (2-3 px where a small
            # crop is enlarged to the input size)
            outside = cell.crop[~_dilate(cell.mask, 3)]
            near_grey = np.abs(outside.astype(int) - np.array(BACKGROUND)).max(axis=1) <= 12
            assert near_grey.mean() > 0.99
            assert not np.all(np.abs(cell.crop[cell.mask].astype(int) - 128) <= 2, axis=1).all()


def test_panel_and_contact_sheet_shapes(pbc_cells):
    from cvat_tools.explain.cells import cell_panel
    from cvat_tools.explain.panels import CAPTION, TILE, contact_sheet

    cells = pbc_cells[2][0]
    panels = [cell_panel(c) for c in cells]
    assert all(p.shape == (TILE + CAPTION, 4 * TILE, 3) and p.dtype == np.uint8 for p in panels)
    # the heat tile differs from the crop tile: the map is drawn, not the crop twice
    assert np.abs(panels[0][:TILE, 2 * TILE:3 * TILE].astype(int) - panels[0][:TILE, :TILE]).mean() > 10
    sheet = contact_sheet(panels, "x")
    assert sheet.shape[1] >= panels[0].shape[1] // 2
    with pytest.raises(ValueError, match="no panels"):
        contact_sheet([], "x")


# -- the commands -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cheap_inputs(tmp_path_factory, bccd_dir):
    """A BCCD field and a blank image (no cells)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("explain-in")
    shutil.copy(bccd_dir / "images" / "BloodImage_00000.jpg", folder / "field.jpg")
    Image.fromarray(np.full((120, 160, 3), 236, np.uint8)).save(folder / "blank.png")
    return folder


@pytest.fixture(scope="module")
def cheap_run(tmp_path_factory, cheap_inputs):
    """explain with the classical segmenter and a random classifier (fast)."""
    out = tmp_path_factory.mktemp("explain-out") / "out"
    code, stdout, stderr = run_cli("explain", cheap_inputs, "--out", out, "--weights", shared_weights())
    return out, code, stdout, stderr


def test_explain_writes_panels_sheet_and_summary(cheap_run, cheap_inputs):
    out, code, stdout, stderr = cheap_run
    assert code == 0, stderr
    summary = json.loads((out / "explain.json").read_text())
    [image] = summary["images"]
    assert image["name"] == "field.jpg" and image["cells"]
    assert (out / image["sheet"]).is_file()
    for cell in image["cells"]:
        assert (out / cell["panel"]).is_file()
        assert set(cell["models"]) == {"classifier"}  # no refiner in these weights
        assert len(cell["models"]["classifier"]["top3"]) == 3
    assert summary["no_cells"] == ["blank.png"]
    assert not any("blank" in p.name for p in out.iterdir())
    assert "blank.png: no cells found" in stderr and "Traceback" not in stderr
    from PIL import Image

    assert Image.open(out / image["cells"][0]["panel"]).size == (3 * 192, 192 + 74)


def test_explain_labels_match_predict(tmp_path, cheap_run, cheap_inputs):
    from cvat_tools.formats.cvat_xml import read_cvat_xml

    out = cheap_run[0]
    pred = tmp_path / "pred"
    code, _, stderr = run_cli("predict", cheap_inputs / "field.jpg", "--out", pred,
                              "--weights", shared_weights(), "--explain")
    assert code == 0, stderr
    explained = json.loads((out / "explain.json").read_text())["images"][0]["cells"]
    written = read_cvat_xml(pred / "annotations.xml").images[0].instances
    assert [c["label"] for c in explained] == [i.label for i in written]
    summary = json.loads((pred / "predict.json").read_text())["explain"]
    assert [c["label"] for c in summary["images"][0]["cells"]] == [i.label for i in written]
    assert all((pred / c["panel"]).is_file() for c in summary["images"][0]["cells"])
    assert (pred / summary["images"][0]["sheet"]).is_file()


def test_only_blank_images_is_one_line_and_no_output(tmp_path, cheap_inputs):
    out = tmp_path / "out"
    code, _, stderr = run_cli("explain", cheap_inputs / "blank.png", "--out", out,
                              "--weights", shared_weights())
    assert code == 2 and "no cells to explain" in stderr and "blank.png" in stderr
    assert "Traceback" not in stderr and not out.exists()


def test_segmenter_only_weights_are_refused_with_the_reason(tmp_path, cheap_inputs):
    from cvat_tools.bundle import save_classical_segmenter

    weights = tmp_path / "w"
    save_classical_segmenter(weights / "segmenter")
    code, _, stderr = run_cli("explain", cheap_inputs, "--out", tmp_path / "o", "--weights", weights)
    assert code == 2 and "segmenter only" in stderr and "Grad-CAM explains a class answer" in stderr
    assert len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli("explain", cheap_inputs, "--out", tmp_path / "o",
                              "--classifier", weights / "segmenter")
    assert code == 2 and "is a segmenter bundle" in stderr
    assert not (tmp_path / "o").exists()


def test_explain_refuses_a_foreign_out_folder(tmp_path, cheap_inputs):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, stderr = run_cli("explain", cheap_inputs, "--out", out, "--weights", shared_weights())
    assert code == 2 and "was not written by 'cvat-tools explain'" in stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_explain_on_a_grid_of_cells_batches_past_one_chunk(tmp_path):
    """More cells than one explainer batch: every cell still gets its own answer and map."""
    from cvat_tools.classify.classifier import CellClassifier
    from cvat_tools.explain.cells import explain_image, explainers
    from cvat_tools.pipeline import Pipeline

    clf = CellClassifier.from_bundle(shared_weights() / "classifier")
    pipeline = Pipeline(GridSegmenter(40, side=12), clf)
    image = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    cells = explain_image(pipeline, explainers(pipeline), image)
    assert len(cells) == 40 and [c.index for c in cells] == list(range(40))
    direct = clf.predict(pipeline.crops(image, pipeline.detect(image), clf.input_size))
    assert [c.answers[0].explanation.prediction.label for c in cells] == [p.label for p in direct]
