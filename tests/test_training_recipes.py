"""The recipes in training/: read by people, and by `train segmenter --config`."""
from __future__ import annotations

from pathlib import Path

import yaml


def test_training_recipes_are_valid_yaml():
    recipes = sorted((Path(__file__).resolve().parents[1] / "training").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"classifier", "refiner", "segmenter"}
    for path in recipes:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
