"""crop and evaluate segmenter commands, end to end on a few real images."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cvat_tools.cli import cli


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False, standalone_mode=False)


def test_crop_keeps_class_folders_and_lists_failures(pbc_dir, tmp_path):
    src = tmp_path / "in"
    for cls in ("eosinophil", "lymphocyte", "platelet"):
        (src / cls).mkdir(parents=True)
        for p in sorted((pbc_dir / cls).glob("*.jpg"))[:2]:
            shutil.copy(p, src / cls / p.name)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["crop", str(src), "--out", str(out), "--size", "96"])
    assert result.exit_code == 0, result.output
    crops = sorted(out.rglob("*.png"))
    assert [c.parent.name for c in crops] == ["eosinophil"] * 2 + ["lymphocyte"] * 2 + ["platelet"] * 2
    for c in crops:
        img = cv2.imread(str(c))
        assert img.shape == (96, 96, 3)
        assert (img[0, 0] == 128).all(), "outside the cell is the neutral grey background"
        assert (img[48, 48] != 128).any(), "the cell sits in the middle"

    # A blank image (no cell) and a corrupt file: listed, non-zero exit, output still whole.
    cv2.imwrite(str(src / "lymphocyte" / "blank.png"), np.full((360, 360, 3), 235, np.uint8))
    (src / "lymphocyte" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    result = CliRunner().invoke(cli, ["crop", str(src), "--out", str(out)])
    assert result.exit_code == 1
    assert "blank.png: no cell found" in result.output and "broken.jpg" in result.output
    assert len(list(out.rglob("*.png"))) == 6


def test_crop_refuses_output_inside_input(pbc_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sorted((pbc_dir / "monocyte").glob("*.jpg"))[0], src)
    from cvat_tools.errors import InputError

    with pytest.raises(InputError):
        _run(["crop", str(src), "--out", str(src / "crops")])


def test_evaluate_classical_on_bccd_test(bccd_dir, tmp_path):
    js, ov = tmp_path / "scores.json", tmp_path / "overlays"
    result = CliRunner().invoke(cli, ["evaluate", "segmenter", "--data", str(bccd_dir), "--classical",
                                      "--limit", "3", "--json", str(js), "--overlays", str(ov)])
    assert result.exit_code == 0, result.output
    assert "mask_AP50" in result.output and "[test]" in result.output
    scores = json.loads(js.read_text())["results"]["classical"]
    assert scores["images"] == 3 and scores["cells"] >= 3
    assert scores["mean_dice"] > 0.7
    assert len(list((ov / "classical").glob("*.png"))) == 3


def test_evaluate_refuses_unknown_folder(tmp_path):
    from cvat_tools.errors import InputError

    with pytest.raises(InputError, match="not a segmentation data folder"):
        _run(["evaluate", "segmenter", "--data", str(tmp_path), "--classical"])


def test_train_refuses_test_split(bccd_dir, tmp_path):
    from cvat_tools.errors import InputError

    with pytest.raises(InputError, match="test split"):
        _run(["train", "segmenter", "--data", str(bccd_dir), "--split", "test", "--out", str(tmp_path / "b")])
