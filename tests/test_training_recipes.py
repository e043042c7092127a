"""The recipes in training/ are what the trainers load (`--config`), and they are true: every
value a recipe sets is the value recorded in the shipped bundle it says it made."""
from __future__ import annotations

from pathlib import Path

import pytest

from cvat_tools.bundle import read_manifest
from cvat_tools.train.classification import ClassifierConfig
from cvat_tools.train.recipe import load_recipe
from cvat_tools.train.refiner import RefinerConfig
from cvat_tools.train.segmentation import SegTrainConfig

TRAINING = Path(__file__).resolve().parents[1] / "training"
WEIGHTS = Path(__file__).resolve().parents[1] / "cvat_tools" / "weights"
CONFIG = {"segmenter": SegTrainConfig, "classifier": ClassifierConfig, "refiner": RefinerConfig}


def _config(path: Path):
    return CONFIG[path.stem.split("_")[0]]


def test_every_recipe_loads_into_its_trainers_config():
    recipes = sorted(TRAINING.glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"classifier", "classifier_finish", "classifier_masks", "refiner",
                                         "segmenter", "segmenter_base"}
    for path in recipes:
        cls = _config(path)
        values = load_recipe(path, cls)
        needed = {"source": "s", "targets": ["t"]} if cls is RefinerConfig else {"data": "d"}
        assert values and cls(out="o", **needed, **values)


def _stages(training: dict):
    """The training records of a bundle and of the bundles it started from, newest first."""
    while training:
        yield training
        training = ((training.get("started_from") or training.get("init_bundle") or {}).get("training"))


@pytest.mark.parametrize("bundle, recipes", [
    ("classifier", ["classifier_masks", "classifier_finish", "classifier"]),
    ("refiner", ["refiner"]),
    ("segmenter", ["segmenter"]),
])
def test_the_recipes_are_the_shipped_bundles_records(bundle, recipes):
    stages = list(_stages(read_manifest(WEIGHTS / bundle)["training"]))
    assert len(stages) >= len(recipes)
    for name, recorded in zip(recipes, stages):
        path = TRAINING / f"{name}.yaml"
        for key, value in load_recipe(path, _config(path)).items():
            if key in recorded:  # keys added since the bundle was made hold the behaviour it had
                want = list(value) if isinstance(value, tuple) else value
                assert recorded[key] == want, f"{path.name}: {key} {value} but the bundle recorded {recorded[key]}"
