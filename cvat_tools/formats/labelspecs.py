"""Label declarations (name, colour, type, attribute specs) as JSON, for the formats that have
no place of their own for them (COCO categories, Datumaro label categories hold names only).

The shape is CVAT's own label constructor JSON ("Raw" tab), so a reader can tell what it is::

    {"name": "neutrophil", "color": "#33ddff", "type": "any",
     "attributes": [{"name": "stage", "input_type": "select", "values": ["a", "b"],
                     "default_value": "a", "mutable": false}]}
"""
from __future__ import annotations

from ..errors import InputError
from .annotations import AttributeSpec, LabelSpec
from .safe_names import shown

MAX_ATTRIBUTES = 256  # per label; CVAT tasks declare a handful
MAX_VALUES = 4096  # per attribute (a long select list)


def spec_to_json(spec: LabelSpec) -> dict:
    out: dict = {"name": spec.name, "type": spec.type or "any"}
    if spec.color:
        out["color"] = spec.color
    out["attributes"] = [{"name": a.name, "input_type": a.input_type, "values": list(a.values),
                          "default_value": a.default, "mutable": bool(a.mutable)}
                         for a in spec.attributes]
    return out


def has_details(spec: LabelSpec) -> bool:
    """True when a spec says more than its name (worth carrying beside the name)."""
    return bool(spec.attributes or spec.color or (spec.type or "any") != "any")


def _text(obj: dict, key: str, where: str, default: str = "") -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InputError(f"{where}: '{key}' must be text, not {shown(value, 40)}")
    return value


def spec_from_json(obj: object, where: str) -> LabelSpec:
    """A LabelSpec from :func:`spec_to_json`'s shape; InputError naming ``where`` otherwise."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a label declaration must be an object")
    name = _text(obj, "name", where)
    if not name:
        raise InputError(f"{where}: a label declaration needs a 'name'")
    attrs = obj.get("attributes") or []
    if not isinstance(attrs, list) or len(attrs) > MAX_ATTRIBUTES:
        raise InputError(f"{where}: 'attributes' must be a list of at most {MAX_ATTRIBUTES} objects")
    specs = []
    for k, attr in enumerate(attrs):
        at = f"{where}.attributes[{k}]"
        if not isinstance(attr, dict):
            raise InputError(f"{at}: must be an object")
        values = attr.get("values") or []
        if (not isinstance(values, list) or len(values) > MAX_VALUES
                or not all(isinstance(v, str) for v in values)):
            raise InputError(f"{at}: 'values' must be a list of at most {MAX_VALUES} texts")
        specs.append(AttributeSpec(name=_text(attr, "name", at), input_type=_text(attr, "input_type", at, "text"),
                                   values=list(values), default=_text(attr, "default_value", at),
                                   mutable=attr.get("mutable") is True))
    return LabelSpec(name=name, attributes=specs, color=_text(obj, "color", where) or None,
                     type=_text(obj, "type", where, "any") or "any")
