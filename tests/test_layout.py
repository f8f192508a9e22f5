"""The package's layout is its architecture: each part imports only the parts below it, and no module
imports itself back through others. Read from the source (every import, lazy or for type checking
alike), so a circle hidden inside a function is found as surely as one at the top of a file."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spatial_attn"

# What each part may import, besides itself: the stated direction of flow (README, "Where things live").
#   engine, data, resources  ->  models  ->  analysis  ->  app | faces  ->  cli
ALLOWED: dict[str, set[str]] = {
    "resources": set(),
    "engine": set(),
    "data": set(),
    "models": {"engine", "data", "resources"},
    "analysis": {"engine", "data", "models"},
    "app": {"engine", "data", "models", "analysis", "resources"},
    "faces": {"engine", "data", "models", "analysis"},
    "cli": {"engine", "data", "models", "analysis", "app", "faces", "resources"},
    "": {"engine", "models", "analysis", "app"},  # the package's own __init__: the public API, re-exported
}


def module_name(path: Path) -> str:
    parts = ["spatial_attn", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports: ``from X import a`` counts as ``X.a`` when that is
    a module, else as ``X``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def part(module: str) -> str:
    """The top-level part a module belongs to (``spatial_attn.engine.layer`` -> ``engine``)."""
    return module.split(".")[1] if module.count(".") else ""


def against_direction(edges: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} imports {b}: {part(a) or 'spatial_attn'} may import only {sorted(ALLOWED[part(a)])}"
        for a, targets in edges.items()
        for b in sorted(targets)
        if part(b) != part(a) and part(b) not in ALLOWED[part(a)]
    ]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_every_part_of_the_package_is_known():
    assert {part(m) for m in modules()} == set(ALLOWED), "a new top-level part: say where it sits in ALLOWED"


def test_each_part_imports_only_the_parts_below_it():
    assert against_direction(graph()) == []


def test_no_module_imports_itself_back():
    assert circles(graph()) == []


def test_parts_never_import_each_other_both_ways():
    edges = graph()
    between = {(part(a), part(b)) for a, bs in edges.items() for b in bs if part(a) != part(b)}
    assert {(a, b) for a, b in between if (b, a) in between} == set()


def test_the_checks_see_a_wrong_import_and_a_circle():
    """The walker is itself checked: an engine module importing the app, and two modules importing
    each other, are both found (the graph is edited, not the source)."""
    edges = graph()
    edges["spatial_attn.engine.layer"] = edges["spatial_attn.engine.layer"] | {"spatial_attn.app.blocks"}
    assert any("engine.layer imports spatial_attn.app.blocks" in p for p in against_direction(edges))
    edges = graph()
    edges["spatial_attn.engine.grid"] = edges["spatial_attn.engine.grid"] | {"spatial_attn.engine.layer"}
    assert ["spatial_attn.engine.grid", "spatial_attn.engine.layer"] in circles(edges)


def test_lazy_and_type_checking_imports_are_read():
    """A circle hidden in a function (as the views once imported ``Follower`` from the app) counts."""
    edges = graph()
    assert "spatial_attn.models" in edges["spatial_attn.analysis.explore"]  # under TYPE_CHECKING
    assert "spatial_attn.data.eyes" in edges["spatial_attn.analysis.explore"]  # inside a method


@pytest.mark.parametrize("module", ["spatial_attn", "spatial_attn.engine", "spatial_attn.analysis.explore"])
def test_the_engine_and_the_analyses_load_no_ui_library(module: str):
    """The engine and what works on a capture from Python load neither gradio, matplotlib nor
    diffusers: a notebook or a training script pays for none of them."""
    code = f"import sys, {module}; print(sorted({{'gradio', 'matplotlib', 'diffusers'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
