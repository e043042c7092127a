"""Bounded parsing of JSON and YAML read from files a user (or an attacker) hands us.

Every JSON or YAML document the tool reads from an input comes through here, so one place
enforces the limits: a size cap checked before parsing, a nesting-depth cap (deep nesting
makes Python's parsers recurse until RecursionError), and for YAML no aliases at all (a few
hundred bytes of nested aliases expand to gigabytes: the "billion laughs" of YAML). No
annotation or recipe file we read needs aliases, so refusing them costs nothing.
Failures are :class:`InputError` naming the file, never a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

MAX_DEPTH = 64
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_JSON_BYTES = 2 * 1024 * 1024 * 1024  # COCO exports of big tasks are large but flat


def _depth_ok(obj: Any, limit: int) -> bool:
    """True when ``obj`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def file_size(path: Path, what: str | None = None) -> int:
    """Size of ``path`` in bytes, checked before reading it; InputError when it cannot be read."""
    try:
        return path.stat().st_size
    except OSError as exc:
        raise InputError(f"{what or path}: cannot read ({exc.strerror or exc})") from None


def _read(source: str | bytes | Path, what: str, max_bytes: int) -> str:
    if isinstance(source, Path):
        size = file_size(source, what)
        if size > max_bytes:
            raise InputError(f"{what}: {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit")
        data: str | bytes = source.read_bytes()
    else:
        data = source
        if len(data) > max_bytes:
            raise InputError(f"{what}: {len(data) / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit")
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"{what}: not UTF-8 text (byte {exc.start})") from None
    return data


def load_json(source: str | bytes | Path, what: str | None = None, *,
              max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON from a path, str or bytes; ``what`` names it in errors (default: the path)."""
    what = what or str(source if isinstance(source, Path) else "JSON")
    text = _read(source, what, max_bytes)
    try:
        obj = json.loads(text)
    except RecursionError:
        raise InputError(f"{what}: JSON nested too deeply (over {max_depth} levels)") from None
    except ValueError as exc:
        raise InputError(f"{what}: not valid JSON ({exc})") from None
    if not _depth_ok(obj, max_depth):
        raise InputError(f"{what}: JSON nested too deeply (over {max_depth} levels)")
    return obj


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases and deep nesting while composing."""

    max_depth = MAX_DEPTH

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not accepted", event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > self.max_depth:
                raise yaml.constructor.ConstructorError(
                    None, None, f"YAML nested too deeply (over {self.max_depth} levels)",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(source: str | bytes | Path, what: str | None = None, *,
              max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse YAML (safe types only, no aliases, bounded size and depth)."""
    what = what or str(source if isinstance(source, Path) else "YAML")
    text = _read(source, what, max_bytes)
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - SafeLoader subclass
    except RecursionError:
        raise InputError(f"{what}: YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or (first[0] if first else "parse error")
        raise InputError(f"{what}: not valid YAML{where}: {problem}"[:300]) from None
