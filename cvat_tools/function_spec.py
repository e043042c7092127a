"""The Nuclio function's ``metadata.annotations.spec``: generated from labels.py and the
Pipeline's attributes, written into ``function.yaml`` and checked against it by the tests.

    python -m cvat_tools.function_spec serverless/pytorch/cvat_tools/wbc/nuclio/function*.yaml
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import labels as label_set
from .pipeline import attribute_specs


def function_spec() -> list[dict[str, Any]]:
    """The ``metadata.annotations.spec`` list: every label, type mask, with our attributes."""
    attributes = [
        {"name": a.name, "input_type": a.input_type, "values": list(a.values)}
        for a in attribute_specs()
    ]
    return [
        {"id": i, "name": name, "type": "mask", "attributes": attributes}
        for i, name in enumerate(label_set.ALL_CLASSES)
    ]


def spec_block(indent: int = 6) -> str:
    """:func:`function_spec` as the YAML literal block body, one label per line."""
    pad = " " * indent
    lines = [pad + "["]
    items = [json.dumps(item, separators=(", ", ": ")) for item in function_spec()]
    for i, item in enumerate(items):
        lines.append(pad + "  " + item + ("," if i < len(items) - 1 else ""))
    lines.append(pad + "]")
    return "\n".join(lines) + "\n"


SPEC_BEGIN = "    spec: |\n"


def write_spec(function_yaml: str | Path) -> bool:
    """Rewrite the ``spec: |`` block of a function.yaml from labels.py; True if it changed."""
    path = Path(function_yaml)
    text = path.read_text()
    start = text.index(SPEC_BEGIN) + len(SPEC_BEGIN)
    end = start
    lines = text[start:].splitlines(keepends=True)
    for line in lines:  # the block ends at the first line indented less than 6 spaces
        if line.strip() and not line.startswith(" " * 6):
            break
        end += len(line)
    new = text[:start] + spec_block() + "\n" + text[end:].lstrip("\n")
    if new != text:
        path.write_text(new)
        return True
    return False


def spec_labels() -> set[str]:
    return {item["name"] for item in function_spec()}


if __name__ == "__main__":  # python -m cvat_tools.function_spec FUNCTION_YAML...: refresh spec
    import sys

    for arg in sys.argv[1:] or []:
        changed = write_spec(arg)
        print(f"{arg}: {'updated' if changed else 'up to date'}")
