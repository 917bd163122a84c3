"""The package's layers (docs/architecture.md): a module imports only from its own layer or lower ones. Read off
the source (every import, those inside functions too), so a change that breaks the layering fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "mixerlab"

# lowest first; a module belongs to the longest prefix listed (docs/architecture.md draws the same table)
LAYERS: list[tuple[str, ...]] = [
    ("mixerlab.config", "mixerlab.tasks", "mixerlab.text"),
    ("mixerlab.ops", "mixerlab.mixers", "mixerlab.model", "mixerlab.knowledge"),
    ("mixerlab.train",),
    ("mixerlab.sandbox",),
    ("mixerlab.check", "mixerlab.evaluate"),
    ("mixerlab.executor", "mixerlab.propose", "mixerlab.judge", "mixerlab.insights",
     "mixerlab.table", "mixerlab.store", "mixerlab.progress", "mixerlab.noise", "mixerlab.reproduction"),
    ("mixerlab.loop",),
    ("mixerlab.web", "mixerlab.cli"),
]


def layer_of(module: str) -> int:
    if module == "mixerlab":  # the package's own __init__: a docstring and a version
        return 0
    best, level = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    assert level is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return level


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                found += [(node.lineno, f"{target}.{a.name}" if not node.module else target) for a in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return [(line, name) for line, name in found if name.startswith("mixerlab")]


MODULES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_modules_import_only_their_layer_or_lower(path: Path) -> None:
    own = layer_of(module_name(path))
    upward = [f"line {line}: {name} (layer {layer_of(name)})" for line, name in imports(path)
              if layer_of(name) > own]
    assert not upward, f"{module_name(path)} (layer {own}) imports from above: {upward}"


def test_the_layers_cover_every_module_and_the_doc_lists_them() -> None:
    doc = (ROOT.parents[1] / "docs" / "architecture.md").read_text()
    for prefixes in LAYERS:
        for prefix in prefixes:
            assert f"`{prefix.removeprefix('mixerlab.')}`" in doc, f"docs/architecture.md's layer table lacks {prefix}"
    for path in MODULES:
        layer_of(module_name(path))


def package_of(module: str) -> str:
    """`mixerlab.evaluate.runner` -> `mixerlab.evaluate`: the top-level package or module a module belongs to."""
    return ".".join(module.split(".")[:2])


def test_each_layer_holds_whole_packages() -> None:
    """A package is one stage with one place in the layering: no package is split across layers."""
    split = [prefix for prefixes in LAYERS for prefix in prefixes if prefix.count(".") != 1]
    assert not split, f"layers name parts of packages: {split}; move the code so that its package has one layer"


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        own = package_of(module_name(path))
        graph.setdefault(own, set()).update(package_of(name) for _, name in imports(path) if package_of(name) != own)
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError(f"import cycle between packages: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for package in sorted(graph):
        if package not in state:
            visit(package, [package])
