"""Recipes: a trainer's config from a YAML file (``--config``) and command-line options.

The trainer's dataclass holds the only defaults; a recipe file sets any of its fields; an
option given on the command line overrides the file (options not given are None). A key the
dataclass does not have, or a value of the wrong type, is refused naming the key and the file,
before anything is written.
"""
from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ..errors import InputError

RESERVED = ("recipe",)  # set from --config itself, never inside a file


def _names(cls) -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(cls)}


def load_recipe(path: str | Path, cls) -> dict:
    """The checked fields of a recipe file for config class ``cls``."""
    from ..guarded import load_yaml

    path = Path(path)
    data = load_yaml(path, f"{path} (recipe)")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: a recipe is a YAML mapping of key: value")
    known = _names(cls)
    for key, value in data.items():
        if key not in known or key in RESERVED:
            allowed = ", ".join(k for k in known if k not in RESERVED)
            raise InputError(f"{path}: unknown key '{key}' (this recipe's keys: {allowed})")
    return {key: _coerce(key, value, known[key], path) for key, value in data.items()}


def _coerce(key: str, value: Any, annotation: str, path: Path) -> Any:
    """A YAML value as the field's type (paths, tuples), or a one-line refusal."""
    kinds = [part.strip() for part in annotation.split("|")]
    if value is None:
        if "None" in kinds:
            return None
        raise InputError(f"{path}: '{key}' needs a value ({annotation})")
    base = next(k for k in kinds if k != "None")
    scalar = {"int": int, "float": (int, float), "bool": bool, "str": str, "Path": str}
    if base in scalar:
        ok = isinstance(value, scalar[base]) and (base == "bool" or not isinstance(value, bool))
        if base == "float" and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if ok:
            return Path(value) if base == "Path" else float(value) if base == "float" else value
    elif base.startswith(("tuple[", "list[")) and isinstance(value, list):
        inner = base[base.index("[") + 1:-1].split(",")[0].strip()
        items = [_coerce(key, v, inner, path) for v in value]
        return tuple(items) if base.startswith("tuple[") else items
    raise InputError(f"{path}: '{key}' must be {annotation}, not {value!r}")


def resolve(cls, config: str | Path | None, options: dict, flags: dict | None = None):
    """``cls`` from the recipe file ``config`` (may be None) overridden by the given ``options``
    (None, or an empty tuple for a repeatable option, means not given). ``flags``: the option
    of a field whose name differs (targets: --target), for the message of a missing one."""
    values = load_recipe(config, cls) if config else {}
    values.update({k: v for k, v in options.items() if v is not None and v != ()})
    if config:
        values["recipe"] = str(config)
    for f in fields(cls):
        if f.name not in values and f.default is MISSING and f.default_factory is MISSING:
            flag = (flags or {}).get(f.name, f"--{f.name.replace('_', '-')}")
            raise InputError(f"pass {flag} (or '{f.name}:' in a --config recipe)")
    return cls(**values)
