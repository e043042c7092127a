"""The project's label set: the one place that names cell types.

Canonical names are the CVAT label names used in the RV-PBS smear annotations
(``../shared/data/cvat_xml``): lower case, with a space ("band cell").
Everything else (PBC folders and file prefixes, BCCD/JTSC categories, upper-case
exports, thesis JSON) is mapped onto them here and nowhere else.
"""
from __future__ import annotations

import re
from pathlib import Path

# The ten smear classes of the thesis, in a fixed order (class index = position).
SMEAR_CLASSES: tuple[str, ...] = (
    "band cell",
    "basophil",
    "blast cell",
    "eosinophil",
    "lymphocyte",
    "metamyelocyte",
    "monocyte",
    "myelocyte",
    "neutrophil",
    "promyelocyte",
)

# Extra classes that PBC has and smear fields may show.
EXTRA_CLASSES: tuple[str, ...] = ("erythroblast", "platelet")

ALL_CLASSES: tuple[str, ...] = SMEAR_CLASSES + EXTRA_CLASSES

# The classes PBC and the smear data share, minus band and blast (the thesis rule keeps the
# classifier's answer for those two): the label set of the DANN refiner.
SHARED_CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "lymphocyte",
    "metamyelocyte",
    "monocyte",
    "myelocyte",
    "neutrophil",
    "promyelocyte",
)

# Classes for which the classifier's answer stands (the thesis rule).
CLASSIFIER_FINAL: tuple[str, ...] = ("band cell", "blast cell")

# The classes every public cross-domain set here has (BCCD, JTSC): used for cross-lab scores.
CROSS_DOMAIN_CLASSES: tuple[str, ...] = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")

# How common each class is among the white cells of an adult's peripheral blood: mid-range
# values of the usual reference differential (neutrophils 40-75 %, lymphocytes 20-45 %,
# monocytes 2-10 %, eosinophils 1-6 %, basophils < 1 %, bands 0-5 %, immature granulocytes
# < 1 %), not fitted to any data set here. The models are trained class-balanced, i.e. under
# a uniform prior; this is the prior a smear field really has (see prior_weights). Blasts,
# erythroblasts and platelets are not expected in a normal field: small, never zero.
PERIPHERAL_BLOOD_PRIOR: dict[str, float] = {
    "neutrophil": 0.56,
    "band cell": 0.03,
    "lymphocyte": 0.30,
    "monocyte": 0.06,
    "eosinophil": 0.03,
    "basophil": 0.007,
    "metamyelocyte": 0.003,
    "myelocyte": 0.002,
    "promyelocyte": 0.001,
    "blast cell": 0.001,
    "erythroblast": 0.002,
    "platelet": 0.002,
}
PRIORS: tuple[str, ...] = ("none", "peripheral-blood")

# PBC fine subclasses: file-name prefix -> canonical label (None = no usable subtype).
PBC_PREFIXES: dict[str, str | None] = {
    "BA": "basophil",
    "EO": "eosinophil",
    "ERB": "erythroblast",
    "LY": "lymphocyte",
    "MO": "monocyte",
    "PLATELET": "platelet",
    "MY": "myelocyte",
    "MMY": "metamyelocyte",
    "PMY": "promyelocyte",
    "IG": None,  # immature granulocyte, subtype unknown
    "BNE": "band cell",
    "SNE": "neutrophil",
    "NEUTROPHIL": None,  # neutrophil, band or segmented unknown
}

# The 11 fine classes of PBC that the default classifier is trained on.
PBC_FINE_CLASSES: tuple[str, ...] = (
    "band cell",
    "basophil",
    "eosinophil",
    "erythroblast",
    "lymphocyte",
    "metamyelocyte",
    "monocyte",
    "myelocyte",
    "neutrophil",
    "platelet",
    "promyelocyte",
)

# PBC folders (the 8 coarse classes) and how each fine label folds into them.
PBC_FOLDERS: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
FINE_TO_PBC_FOLDER: dict[str, str] = {
    "band cell": "neutrophil",
    "neutrophil": "neutrophil",
    "myelocyte": "ig",
    "metamyelocyte": "ig",
    "promyelocyte": "ig",
    "basophil": "basophil",
    "eosinophil": "eosinophil",
    "erythroblast": "erythroblast",
    "lymphocyte": "lymphocyte",
    "monocyte": "monocyte",
    "platelet": "platelet",
}

# Aliases: any spelling seen in exports, folders or datasets -> canonical label.
_ALIASES: dict[str, str] = {
    "band": "band cell",
    "band cells": "band cell",
    "band neutrophil": "band cell",
    "bne": "band cell",
    "basophils": "basophil",
    "ba": "basophil",
    "blast": "blast cell",
    "blast cells": "blast cell",
    "blasts": "blast cell",
    "eosinophils": "eosinophil",
    "eo": "eosinophil",
    "lymphocytes": "lymphocyte",
    "ly": "lymphocyte",
    "metamyelocytes": "metamyelocyte",
    "mmy": "metamyelocyte",
    "monocytes": "monocyte",
    "mo": "monocyte",
    "myelocytes": "myelocyte",
    "my": "myelocyte",
    "neutrophils": "neutrophil",
    "segmented neutrophil": "neutrophil",
    "sne": "neutrophil",
    "promyelocytes": "promyelocyte",
    "pmy": "promyelocyte",
    "erythroblasts": "erythroblast",
    "erb": "erythroblast",
    "platelets": "platelet",
    "thrombocyte": "platelet",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def canonical(name: str) -> str | None:
    """Canonical label for ``name`` (any case or known alias), or None if unknown."""
    key = _key(name)
    if key in ALL_CLASSES:
        return key
    return _ALIASES.get(key)


def resolve(name: str, label_map: dict[str, str] | None = None) -> str | None:
    """Apply a user label map first (exact, then case-insensitive), then the aliases."""
    if label_map:
        if name in label_map:
            return label_map[name]
        lowered = {_key(k): v for k, v in label_map.items()}
        if _key(name) in lowered:
            return lowered[_key(name)]
    return canonical(name)


def pbc_label(path: str | Path) -> str | None:
    """Fine label of a PBC image from its file name (``BNE_123.jpg`` -> ``band cell``)."""
    stem = Path(path).stem
    prefix = stem.rsplit("_", 1)[0].upper() if "_" in stem else stem.upper()
    return PBC_PREFIXES.get(prefix)


def split_categories(category: str) -> list[str]:
    """BCCD's ``"NEUTROPHIL, EOSINOPHIL"`` -> canonical labels (unknown names dropped)."""
    out = []
    for part in category.split(","):
        label = canonical(part) if part.strip() else None
        if label:
            out.append(label)
    return out


def label_index(labels: tuple[str, ...] | list[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(labels)}


def prior_weights(name: str, labels: tuple[str, ...] | list[str]) -> dict[str, float] | None:
    """Per-label decision weights for a class-balanced model under prior ``name``.

    A model trained with balanced sampling estimates p(class | crop) under a uniform prior;
    by Bayes, under the prior pi the posterior is proportional to p(class | crop) * pi(class).
    Returns pi over ``labels`` (renormalized) or None for "none".
    """
    if name == "none":
        return None
    if name != "peripheral-blood":
        raise ValueError(f"unknown prior {name!r}; choose one of {PRIORS}")
    unknown = [lab for lab in labels if lab not in PERIPHERAL_BLOOD_PRIOR]
    if unknown:
        raise ValueError(f"the peripheral-blood prior has no value for {unknown}")
    total = sum(PERIPHERAL_BLOOD_PRIOR[lab] for lab in labels)
    return {lab: PERIPHERAL_BLOOD_PRIOR[lab] / total for lab in labels}
