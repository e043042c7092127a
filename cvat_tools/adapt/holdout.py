"""The held-out corrections: 20 % of each class (at least one), stratified and seeded, so the
before/after check scores cells no model was trained on. The split is recorded by cell key."""
from __future__ import annotations

import math

import numpy as np

HOLDOUT = 0.2


def split(keys_by_class: dict[str, list[str]], seed: int, fraction: float = HOLDOUT
          ) -> tuple[list[str], list[str]]:
    """(train keys, held-out keys); each class with n >= 2 cells holds out max(1, round(f n))
    and keeps at least one to train on. The order of the input does not matter."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in sorted(keys_by_class):
        keys = sorted(keys_by_class[label])
        n_held = min(max(1, math.floor(fraction * len(keys) + 0.5)), len(keys) - 1)
        order = rng.permutation(len(keys))
        held += [keys[i] for i in sorted(order[:n_held])]
        train += [keys[i] for i in sorted(order[n_held:])]
    return train, held
