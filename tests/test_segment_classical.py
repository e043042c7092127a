"""Classical segmenter and centre_cell_mask on real BCCD, JTSC and PBC images."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from cvat_tools.errors import InputError
from cvat_tools.imaging import decode_image, load_image
from cvat_tools.segment.base import Detection
from cvat_tools.segment.classical import ClassicalSegmenter, centre_cell_mask
from cvat_tools.train.metrics import dice
from cvat_tools.train.segmentation_data import read_index


def _union(dets: list[Detection], h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), dtype=bool)
    for d in dets:
        out |= d.full_mask(h, w)
    return out


def test_classical_on_bccd_test_images(bccd_dir):
    # Measured: mean Dice 0.87 on the 55 test images (cvat-tools evaluate segmenter --classical).
    samples = read_index(bccd_dir, "test")[:8]
    seg = ClassicalSegmenter()
    scores = []
    for s in samples:
        image = load_image(s.image)
        h, w = image.shape[:2]
        dets = seg.segment(image)
        assert all(isinstance(d, Detection) and d.mask.bitmap.dtype == bool for d in dets)
        for d in dets:  # masks are stored cropped to the cell's box
            x1, y1, x2, y2 = d.box
            assert (x2 - x1, y2 - y1) == (d.mask.width, d.mask.height)
        gt = np.any(np.stack(s.load_masks()), axis=0)
        scores.append(dice(_union(dets, h, w), gt))
    assert np.mean(scores) >= 0.75, scores


@pytest.mark.parametrize("cls", ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte",
                                 "monocyte", "neutrophil", "platelet"])
def test_centre_cell_mask_on_pbc(pbc_dir, cls):
    paths = sorted((pbc_dir / cls).glob("*.jpg"))[:3]
    for path in paths:
        image = load_image(path)
        mask = centre_cell_mask(image)
        assert mask is not None, path
        h, w = image.shape[:2]
        assert mask.shape == (h, w)
        n, _ = cv2.connectedComponents(mask.astype(np.uint8))
        assert n == 2, f"{path}: one cell, one component"
        frac = mask.mean()
        assert 0.003 < frac < 0.5, (path, frac)
        ys, xs = np.nonzero(mask)
        # the cell found is the centred one: its box holds the image centre (platelets are tiny,
        # allow them a little slack)
        slack = 0.1 * w
        assert xs.min() - slack <= w / 2 <= xs.max() + slack and ys.min() - slack <= h / 2 <= ys.max() + slack


def test_centre_cell_mask_on_jtsc(jtsc_dir):
    # Measured: mean Dice 0.87 over all 300 JTSC images (evaluate segmenter --classical).
    samples = read_index(jtsc_dir)[:20]
    scores = []
    for s in samples:
        mask = centre_cell_mask(load_image(s.image))
        gt = s.load_masks()[0]
        scores.append(0.0 if mask is None else dice(mask, gt))
    assert np.mean(scores) >= 0.75, scores


def test_no_cell_gives_nothing():
    blank = np.full((300, 400, 3), (240, 225, 215), dtype=np.uint8)  # empty slide
    assert centre_cell_mask(blank) is None
    assert ClassicalSegmenter().segment(blank) == []


def test_wrong_input_is_refused():
    seg = ClassicalSegmenter()
    with pytest.raises(InputError):
        seg.segment(np.zeros((50, 50), dtype=np.uint8))
    with pytest.raises(InputError):
        seg.segment(np.zeros((50, 50, 3), dtype=np.float32))


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_segmenters_get_rgb_uint8_from_odd_modes(bccd_dir):
    """Grayscale, RGBA, 16-bit, CMYK and EXIF-rotated files all reach the segmenter as RGB uint8."""
    s = read_index(bccd_dir, "test")[0]
    rgb = load_image(s.image)
    pil = Image.fromarray(rgb)
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(rgb)))
    exif = rotated.getexif()
    exif[0x0112] = 8  # "rotate 90 CW to view": undoes the np.rot90 above
    variants = {
        "gray": _encode(pil.convert("L")),
        "rgba": _encode(pil.convert("RGBA")),
        "16bit": _encode(Image.fromarray((np.asarray(pil.convert("L")).astype(np.uint16) * 257))),
        "cmyk": _encode(pil.convert("CMYK"), "JPEG", quality=95),
        "exif": _encode(rotated, "JPEG", quality=95, exif=exif),
    }
    seg = ClassicalSegmenter()
    for name, data in variants.items():
        image = decode_image(data, name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        dets = seg.segment(image)
        assert isinstance(dets, list), name
        if name in ("rgba", "exif"):
            assert image.shape == rgb.shape, name
            assert dets, f"{name}: the WBC is still found"
