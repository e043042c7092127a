"""Generated crop folders (DIR/<class>/*.png) for the classifier's data, pack and training tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cvat_tools.crops import BACKGROUND


def write_noise_crop(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    img = np.full((40, 40, 3), 128, np.uint8)
    img[8:32, 8:32] = rng.integers(0, 255, (24, 24, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def make_crops(root: Path, per_class: int = 8, classes=("lymphocyte", "Monocytes", "EO"), dup_every: int = 0):
    seed = 0
    for name in classes:
        for i in range(per_class):
            seed += 1
            p = write_noise_crop(root / name / f"{i:03d}.png", seed)
            if dup_every and i % dup_every == 0:  # a byte-identical copy under another name
                (root / name / f"{i:03d}_copy.png").write_bytes(p.read_bytes())
    return root


SIZE = 48


def smooth_cell(rng: np.random.Generator) -> np.ndarray:
    """A smooth stained cell on the exact crop grey: what real masked crops look like."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = BACKGROUND
    c = SIZE // 2 + int(rng.integers(-3, 4))
    cv2.circle(img, (c, c), int(rng.integers(14, 20)), tuple(int(v) for v in rng.integers(150, 230, 3)), -1)
    cv2.circle(img, (c + 2, c - 1), int(rng.integers(5, 9)), tuple(int(v) for v in rng.integers(60, 140, 3)), -1)
    return img


def smooth_cell_folder(root: Path, classes=("lymphocyte", "monocyte", "eosinophil"), per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / name / f"{i:03d}.png"), smooth_cell(rng)[..., ::-1])
    return root
