"""The scale options of every entry point (predict, evaluate segmenter, classify, crop, the
cvat-sdk function, the Nuclio environment) and what they record."""
from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from cli_run import run_cli as run
from cvat_tools import serverless
from cvat_tools.bundle import shipped_bundle
from cvat_tools.errors import InputError
from pipeline_fakes import shared_weights

SEGMENTER = shipped_bundle("segmenter")
needs_segmenter = pytest.mark.skipif(SEGMENTER is None, reason="no shipped segmenter bundle")


@pytest.mark.parametrize("command", [
    ["predict", "X", "--out", "OUT"],
    ["classify", "X", "--out", "OUT.csv"],
    ["evaluate", "segmenter", "--data", "DATA"],
    ["crop", "DATA", "--out", "OUT"],
])
@pytest.mark.parametrize("bad", [["--cell-size", "7"], ["--cell-size", "2500"],
                                 ["--um-per-px", "-1"], ["--cell-size", "100", "--um-per-px", "0.1"]])
def test_bad_scale_is_one_line_exit_2(command, bad, tmp_path, bccd_dir):
    image = bccd_dir / "images" / "BloodImage_00002.jpg"
    subs = {"X": str(image), "OUT": str(tmp_path / "out"), "OUT.csv": str(tmp_path / "p.csv"),
            "DATA": str(bccd_dir)}
    code, out, err = run(*[subs.get(a, a) for a in command], *bad)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.csv").exists()


@needs_segmenter
def test_predict_records_the_scale_and_honours_cell_size(tmp_path, bccd_dir):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(bccd_dir / "images" / "BloodImage_00002.jpg", src / "field.jpg")
    grey = cv2.cvtColor(cv2.imread(str(src / "field.jpg")), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(src / "grey.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    common = ["--segmenter", SEGMENTER, "--weights", shared_weights(), "--report"]
    code, _, err = run("predict", src, "--out", tmp_path / "auto", *common)
    assert code == 0, err
    info = json.loads((tmp_path / "auto" / "predict.json").read_text())
    scales = {im["name"]: im["scale"] for im in info["images"]}
    assert scales["field.jpg"]["method"] == "red_cells" and 0.4 < scales["field.jpg"]["factor"] < 0.9
    assert scales["grey.png"]["grayscale"] is True
    assert "grayscale" in err and any("grey.png" in w for w in info["warnings"])
    rows = list(csv.DictReader(open(tmp_path / "auto" / "report" / "scale.csv")))
    assert {r["image"]: r["method"] for r in rows}["field.jpg"] == "red_cells"

    code, _, err = run("predict", src / "field.jpg", "--out", tmp_path / "given", "--cell-size", "150", *common)
    assert code == 0, err
    info = json.loads((tmp_path / "given" / "predict.json").read_text())
    scale = info["images"][0]["scale"]
    assert scale["method"] == "cell_size" and scale["cell_size"] == 150.0
    assert scale["factor"] == pytest.approx(174.2 * 384 / 640 / 150, rel=1e-3)
    assert info["scale"]["cell_size"] == 150.0


@needs_segmenter
def test_classify_one_code_path_for_single_cells(tmp_path, pbc_dir, jtsc_dir):
    # A PBC image, another lab's small crop enlarged 3.5x, and the masked crop 'crop' makes:
    # each is cut to (or already is) one cell, and the CSV says how.
    from cvat_tools.crops import cell_crop

    pbc = sorted((pbc_dir / "neutrophil").glob("*.jpg"))[-1]
    jtsc = cv2.imread(str(jtsc_dir / "images" / "002.png"))
    big = cv2.resize(jtsc, None, fx=3.5, fy=3.5, interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "jtsc_big.png"), big)
    mask = cv2.imread(str(jtsc_dir / "masks" / "002.png"), 0) > 0
    masked = cell_crop(jtsc[..., ::-1], mask)
    cv2.imwrite(str(tmp_path / "masked.png"), cv2.cvtColor(masked, cv2.COLOR_RGB2BGR))
    out = tmp_path / "p.csv"
    code, _, err = run("classify", pbc, tmp_path / "jtsc_big.png", tmp_path / "masked.png",
                       "--out", out, "--segmenter", SEGMENTER)
    assert code == 0, err
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(out))}
    assert rows[pbc.name]["mask"] == "segmenter"
    assert rows["jtsc_big.png"]["mask"] == "segmenter"
    assert rows["masked.png"]["mask"] == "masked_crop"


@needs_segmenter
def test_single_cell_images_give_one_centre_cell(jtsc_dir, pbc_dir):
    from cvat_tools.imaging import load_image
    from cvat_tools.models.registry import load_segmenter
    from cvat_tools.segment.single_cell import centre_cell

    seg = load_segmenter(SEGMENTER)
    for name in ("002.png", "010.png"):
        image = load_image(jtsc_dir / "images" / name)
        truth = cv2.imread(str(jtsc_dir / "masks" / name), 0) > 0
        big = cv2.resize(image, None, fx=3.5, fy=3.5, interpolation=cv2.INTER_CUBIC)
        big_truth = cv2.resize(truth.astype(np.uint8), None, fx=3.5, fy=3.5, interpolation=cv2.INTER_NEAREST) > 0
        dets = seg.segment(big, 0.5)
        assert len(dets) == 1, (name, len(dets))  # not its lobes, not the mirrored copies
        det, source = centre_cell(seg, big)
        m = det.full_mask(*big.shape[:2])
        assert source == "segmenter" and 2 * (m & big_truth).sum() / (m.sum() + big_truth.sum()) > 0.85


def test_cvat_function_and_nuclio_pass_the_scale(monkeypatch):
    from cvat_tools import cvat_function
    from cvat_tools.pipeline import Pipeline

    seen = []
    monkeypatch.setattr(Pipeline, "load", classmethod(lambda cls, **kw: seen.append(kw) or Pipeline(object())))
    cvat_function.create(cell_size="150")  # cvat-cli -p cell_size=str:150
    assert seen[-1]["cell_size"] == 150.0 and seen[-1]["um_per_px"] is None
    with pytest.raises(InputError, match="cell_size must be a number"):
        cvat_function.create(cell_size="big")
    monkeypatch.setenv(serverless.ENV_CELL_SIZE, "420")
    serverless.load_pipeline_from_env()
    assert seen[-1]["cell_size"] == 420.0
    monkeypatch.setenv(serverless.ENV_CELL_SIZE, "")  # the function.yaml default: estimate
    serverless.load_pipeline_from_env()
    assert seen[-1]["cell_size"] is None


def test_pipeline_load_checks_the_scale_before_loading():
    from cvat_tools.pipeline import Pipeline

    with pytest.raises(InputError, match="outside 8-2000"):
        Pipeline.load(weights=shared_weights(), cell_size=5)
