"""The package's layering, checked from the source with ``ast`` (nothing is imported).

Rules (docs/reference.md "Package layers", issue 20):
* only ``cvat_tools/train/``, ``adapt/`` and the ``train_*`` / ``evaluate_*`` / ``adapt`` commands import ``cvat_tools.train``;
* ``data/`` and ``formats/`` never import ``train``; ``formats/`` knows nothing of torch;
* no import cycle among cvat_tools modules (function-level imports count too);
* no function in cvat_tools/ longer than ``MAX_LINES`` lines (from ``def`` to its last line;
  a click command's decorators do not count).

Each rule is a plain function over a ``{module: source}`` map, so the tests below also prove
every rule fails on a planted violation.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cvat_tools"
MAX_LINES = 80
# Owned by the training-engine refactor (issue 20); the lead adds them after merging it.
LONG_FUNCTION_EXEMPT: set[str] = set()  # the trainers too, since train/engine.py
TORCH = ("torch", "torchvision", "timm")


def package_sources(root: Path = PACKAGE) -> dict[str, str]:
    """Every module of the package: dotted name -> source text."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        sources[".".join(parts)] = path.read_text(encoding="utf-8")
    return sources


@functools.lru_cache(maxsize=None)
def _parsed(source: str) -> ast.Module:
    return ast.parse(source)  # each planted-violation test changes one module: reuse the rest


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, source: str, known: set[str]) -> set[str]:
    """Absolute names ``module`` imports anywhere in its body (function-level included).
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module."""
    is_package = any(k.startswith(module + ".") for k in known)
    found = set()
    for node in ast.walk(_parsed(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    return found


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    known = set(sources)
    return {m: imports_of(m, src, known) for m, src in sources.items()}


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def may_import_train(module: str) -> bool:
    if _under(module, "cvat_tools.train") or _under(module, "cvat_tools.adapt"):
        return True  # adapt trains: it is the one-command recipe over train/
    leaf = module.rsplit(".", 1)[-1]
    return _under(module, "cvat_tools.commands") and leaf.startswith(("train_", "evaluate_", "adapt"))


def train_import_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {i}" for m, deps in graph.items() if not may_import_train(m)
                  for i in deps if _under(i, "cvat_tools.train"))


def lower_layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """data/ and formats/ never import train/; formats/ never imports torch (directly, or
    through another cvat_tools module that does)."""
    bad = [f"{m} imports {i}" for m, deps in graph.items()
           if _under(m, "cvat_tools.data") or _under(m, "cvat_tools.formats")
           for i in deps if _under(i, "cvat_tools.train")]
    for m in graph:
        if _under(m, "cvat_tools.formats"):
            for path in _paths_to_torch(m, graph):
                bad.append(f"{m} reaches torch: {' -> '.join(path)}")
    return sorted(bad)


def _paths_to_torch(start: str, graph: dict[str, set[str]]) -> list[list[str]]:
    seen, stack, hits = {start}, [[start]], []
    while stack:
        path = stack.pop()
        for dep in sorted(graph.get(path[-1], ())):
            if any(_under(dep, t) for t in TORCH):
                hits.append(path + [dep])
            elif dep in graph and dep not in seen:
                seen.add(dep)
                stack.append(path + [dep])
    return hits


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan). A package's ``__init__``
    importing its own submodule is not a cycle: submodules import the package implicitly."""
    edges = {m: {d for d in deps if d in graph and d != m and not _under(m, d)}
             for m, deps in graph.items()}
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def long_functions(sources: dict[str, str], limit: int = MAX_LINES,
                   exempt: set[str] = frozenset()) -> list[str]:
    found = []
    for module, source in sources.items():
        if module in exempt:
            continue
        for node in ast.walk(_parsed(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # def line to last line
                if length > limit:
                    found.append(f"{module}.{node.name} (line {node.lineno}): {length} lines")
    return sorted(found)


# -- the package as it is ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return package_sources()


@pytest.fixture(scope="module")
def graph(sources) -> dict[str, set[str]]:
    return import_graph(sources)


def test_the_package_is_seen(sources, graph):
    # a broken walker would make every rule below pass on nothing
    assert {"cvat_tools.pipeline", "cvat_tools.train.classification", "cvat_tools.formats.masks",
            "cvat_tools.data.cells"} <= set(sources)
    assert "cvat_tools.train.classification" in {d for deps in graph.values() for d in deps}


def test_only_training_and_evaluation_import_train(graph):
    assert train_import_violations(graph) == []


def test_data_and_formats_stay_below_train_and_torch(graph):
    assert lower_layer_violations(graph) == []


def test_no_import_cycles(graph):
    assert import_cycles(graph) == []


def test_no_long_functions(sources):
    assert long_functions(sources, exempt=LONG_FUNCTION_EXEMPT) == []


# -- each rule fails on a planted violation ------------------------------------------------------


def _planted(sources: dict[str, str], module: str, line: str) -> dict[str, str]:
    changed = dict(sources)
    changed[module] = sources[module] + "\n" + line + "\n"
    return changed


def test_a_train_import_from_inference_is_caught(sources):
    bad = import_graph(_planted(sources, "cvat_tools.classify.classifier",
                                "def f():\n    from ..train import checkpoint"))
    found = train_import_violations(bad)
    assert "cvat_tools.classify.classifier imports cvat_tools.train.checkpoint" in found
    assert all(v.startswith("cvat_tools.classify.classifier imports cvat_tools.train") for v in found)
    # the commands that train and evaluate may
    ok = import_graph(_planted(sources, "cvat_tools.commands.evaluate_classifier",
                               "from ..train import checkpoint"))
    assert train_import_violations(ok) == []


def test_formats_importing_torch_or_train_is_caught(sources):
    direct = import_graph(_planted(sources, "cvat_tools.formats.coco", "import torch"))
    assert ("cvat_tools.formats.coco reaches torch: cvat_tools.formats.coco -> torch"
            in lower_layer_violations(direct))
    # through another module of the package
    indirect = import_graph(_planted(sources, "cvat_tools.formats.yolo",
                                     "from ..classify import classifier"))
    assert any(v.startswith("cvat_tools.formats.yolo reaches torch: cvat_tools.formats.yolo -> "
                            "cvat_tools.classify.classifier") for v in lower_layer_violations(indirect))
    data = import_graph(_planted(sources, "cvat_tools.data.cells", "from ..train import augment"))
    assert "cvat_tools.data.cells imports cvat_tools.train.augment" in lower_layer_violations(data)


def test_a_function_level_cycle_is_caught(sources):
    bad = import_graph(_planted(sources, "cvat_tools.labels",
                                "def f():\n    from .pipeline import Pipeline"))
    assert any({"cvat_tools.labels", "cvat_tools.pipeline"} <= set(g) for g in import_cycles(bad))


def test_a_long_function_is_caught(sources):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    bad = _planted(sources, "cvat_tools.labels", f"def too_long():\n{body}")
    assert long_functions(bad, exempt=LONG_FUNCTION_EXEMPT) == [
        f"cvat_tools.labels.too_long (line {sources['cvat_tools.labels'].count(chr(10)) + 2}): "
        f"{MAX_LINES + 1} lines"]
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES - 1))
    assert long_functions(_planted(sources, "cvat_tools.labels", f"def fits():\n{body}"),
                          exempt=LONG_FUNCTION_EXEMPT) == []
