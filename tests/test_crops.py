import numpy as np

from cvat_tools.crops import BACKGROUND, cell_crop


def test_crop_is_square_masked_and_centred():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:] = (200, 10, 10)
    mask = np.zeros((100, 200), bool)
    mask[20:40, 50:90] = True  # 20 x 40 cell
    out = cell_crop(image, mask, margin=0.0)
    assert out.shape == (40, 40, 3)
    assert (out[10:30, :] == (200, 10, 10)).all()
    assert (out[:10] == BACKGROUND).all() and (out[30:] == BACKGROUND).all()


def test_cropped_mask_offset_matches_full_mask():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    full = np.zeros((60, 80), bool)
    full[10:30, 30:55] = True
    a = cell_crop(image, full, size=32)
    b = cell_crop(image, full[10:30, 30:55], left=30, top=10, size=32)
    assert a.shape == (32, 32, 3)
    assert np.array_equal(a, b)


def test_cell_at_image_border_is_padded():
    image = np.full((50, 50, 3), 255, np.uint8)
    mask = np.zeros((50, 50), bool)
    mask[0:10, 0:10] = True
    out = cell_crop(image, mask, margin=0.5)
    assert out.shape == (20, 20, 3)
    assert (out[0, 0] == BACKGROUND).all()
    assert (out[10, 10] == 255).all()
