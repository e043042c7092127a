"""Safe image loading: odd modes come out RGB uint8; hostile files give ImageError."""
import io

import numpy as np
import pytest
from PIL import Image

from cvat_tools import imaging
from cvat_tools.errors import ImageError


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG")],
)
def test_modes_become_rgb_uint8(mode, fmt):
    img = Image.new(mode, (7, 5))
    out = imaging.decode_image(_encode(img, fmt), "x")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8


def test_16bit_scaled_not_clipped():
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    out = imaging.decode_image(_encode(Image.fromarray(arr), "PNG"))
    assert out.max() == 255 and out.min() == 255


def test_rgba_transparent_becomes_white():
    img = Image.new("RGBA", (3, 3), (255, 0, 0, 0))
    out = imaging.decode_image(_encode(img, "PNG"))
    assert (out == 255).all()


def test_exif_rotation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = _encode(img, "JPEG", exif=exif, quality=95)
    out = imaging.decode_image(data)
    assert out.shape[:2] == (40, 20)
    assert out[:10].mean() > 200  # the stripe is now on top


def test_bomb_refused_before_decoding():
    img = Image.new("L", (9000, 8000))  # 72 MP > limit
    data = _encode(img, "PNG", optimize=False)
    with pytest.raises(ImageError, match="bomb|limit"):
        imaging.decode_image(data, "bomb.png")


def test_corrupt_and_non_image(tmp_path):
    good = _encode(Image.new("RGB", (64, 64), (10, 20, 30)), "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "text.jpg").write_bytes(b"hello, not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("trunc.jpg", "text.jpg", "empty.png", "missing.png"):
        with pytest.raises(ImageError, match=name):
            imaging.load_image(tmp_path / name)


def test_real_bccd_image(bccd_dir):
    out = imaging.load_image(bccd_dir / "images" / "BloodImage_00000.jpg")
    assert out.shape == (480, 640, 3)
