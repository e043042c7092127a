"""Map the labels of an annotation file onto the project's label set (labels.py).

Names resolve through ``labels.resolve``: the user's ``--label-map`` file first, then the
known aliases ("Neutrophils", "BNE", "band_cell" ...). A map may send a label to ``null`` (or
"") to leave its shapes out on purpose (e.g. ``rbc: null``); they are listed as skipped.
"""
from __future__ import annotations

from pathlib import Path

from .. import labels
from ..errors import InputError
from ..guarded import load_json, load_yaml
from .annotations import Dataset, LabelSpec

MAX_MAP_BYTES = 1024 * 1024


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def load_label_map(path: str | Path) -> dict[str, str | None]:
    """Read a YAML or JSON mapping ``source label -> project label`` (or null to drop)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = load_json(path, max_bytes=MAX_MAP_BYTES)
    else:  # YAML is a superset of JSON: any other suffix reads as YAML
        data = load_yaml(path, max_bytes=MAX_MAP_BYTES)
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise InputError(f"{path}: a label map is a mapping 'label in the file: project label', "
                         "e.g. 'Neutrophil-segmented: neutrophil' and 'rbc: null' on their own lines")
    out: dict[str, str | None] = {}
    bad = []
    for key, value in data.items():
        if value is None or value == "":
            out[key] = None
            continue
        target = labels.canonical(str(value))
        if target is None:
            bad.append(f"{key[:40]!r} -> {str(value)[:40]!r}")
        out[key] = target
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise InputError(f"{path}: maps to labels the project does not have: {shown}; "
                         f"project labels: {', '.join(labels.ALL_CLASSES)}")
    return out


def apply_label_map(dataset: Dataset, label_map: dict[str, str | None] | None, source: str) -> Dataset:
    """Rename every instance's label to the project's name, in place; InputError lists the unknown.

    Labels mapped to None are removed and listed in ``dataset.skipped``.
    """
    label_map = label_map or {}
    dropped = {k for k, v in label_map.items() if v is None}
    dropped_keys = {_norm(k) for k in dropped}
    resolved: dict[str, str | None] = {}
    unknown: dict[str, int] = {}
    for image in dataset.images:
        for inst in image.instances:
            name = inst.label
            if name in resolved:
                continue
            if name in dropped or _norm(name) in dropped_keys:
                resolved[name] = None
                continue
            target = labels.resolve(name, {k: v for k, v in label_map.items() if v is not None})
            resolved[name] = target
            if target is None:
                unknown[name] = 0
    for image in dataset.images:
        for inst in image.instances:
            if inst.label in unknown:
                unknown[inst.label] += 1
    if unknown:
        listed = ", ".join(f"{name!r} ({n} shapes)" for name, n in sorted(unknown.items()))
        raise InputError(
            f"{source}: labels not in the project's label set: {listed}. Pass --label-map FILE "
            "(YAML or JSON, e.g. 'Seg Neutrophil: neutrophil', or 'rbc: null' to leave them out); "
            f"project labels: {', '.join(labels.ALL_CLASSES)}"
        )
    for image in dataset.images:
        kept = []
        for inst in image.instances:
            target = resolved[inst.label]
            if target is None:
                dataset.skipped.append({"image": image.name, "label": inst.label,
                                        "reason": "label mapped to null by the label map"})
                continue
            inst.label = target
            kept.append(inst)
        image.instances = kept
    # declared labels follow the same renaming (attributes kept), dropped ones go
    specs: dict[str, LabelSpec] = {}
    for spec in dataset.labels:
        target = resolved.get(spec.name, labels.resolve(spec.name, {k: v for k, v in label_map.items() if v}))
        if target and target not in specs:
            specs[target] = LabelSpec(name=target, attributes=spec.attributes, color=spec.color, type=spec.type)
    dataset.labels = list(specs.values())
    return dataset
