"""The package's architecture, checked: which subpackage may import which, no cycles,
and the parts that must work without TensorFlow import without it."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_lrp"

# What each subpackage may import (besides itself). The top-level modules (plugin,
# items, fixtures, xdist_scheduling) sit above all of them and may import anything.
ALLOWED = {
    "base": set(),
    "config": {"base"},
    "models": {"base", "config"},
    "reference": {"base"},
    "checks": {"base", "config", "models", "reference"},
    "pytorch": {"base", "config", "models", "checks", "reference"},
    "transformer": {"base", "config", "models", "checks", "reference", "pytorch"},
    "engine": {"base", "config", "models", "checks", "reference", "pytorch", "transformer"},
    "reports": {"base", "config", "models", "checks", "engine", "pytorch"},
}
WITHOUT_TENSORFLOW = ("config", "checks", "pytorch", "transformer")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set:
    """pytest_lrp modules imported by a file, including deferred imports inside functions,
    leaving out those under `if TYPE_CHECKING:` (annotations only, never executed)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if not stem.startswith("pytest_lrp"):
                continue
            for alias in node.names:
                candidate = f"{stem}.{alias.name}"
                found.add(candidate if _exists(candidate) else stem)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pytest_lrp"))
    return found


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


def _graph() -> dict:
    return {_module_name(p): _runtime_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _subpackage(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def test_every_subpackage_says_what_lives_there_and_what_it_may_import():
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert docstring and "import" in docstring, (
            f"{folder.name}/__init__.py needs a docstring saying what it may import"
        )
        assert folder.name in ALLOWED, f"new subpackage {folder.name}: add its allowed imports to ALLOWED in this test"


def _wrong_directions(graph: dict) -> list:
    wrong = []
    for module, imports in graph.items():
        here = _subpackage(module)
        if here is None:
            continue
        for imported in imports:
            there = _subpackage(imported)
            if there is None and imported != "pytest_lrp":
                wrong.append(f"{module} imports top-level {imported}")
            elif there not in (here, None) and there not in ALLOWED[here]:
                wrong.append(f"{module} imports {imported} ({here} may import {sorted(ALLOWED[here]) or 'nothing'})")
    return wrong


def _cycles(graph: dict) -> list:
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                cycles.append(" -> ".join([*stack[stack.index(imported) :], imported]))
            elif imported not in state:
                visit(imported)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_dependencies_point_one_way():
    wrong = _wrong_directions(_graph())
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layout_checks_see_a_wrong_direction_and_a_cycle():
    # The two tests above must be able to fail: plant a checks -> engine import into the real graph.
    graph = _graph()
    graph["pytest_lrp.checks.record"] = graph["pytest_lrp.checks.record"] | {"pytest_lrp.engine.workbench"}
    assert any(
        "pytest_lrp.checks.record imports pytest_lrp.engine.workbench" in line for line in _wrong_directions(graph)
    )
    assert any("pytest_lrp.checks.record ->" in c for c in _cycles(graph))


@pytest.mark.parametrize("subpackage", WITHOUT_TENSORFLOW)
def test_imports_without_tensorflow(subpackage):
    if subpackage == "transformer" and importlib.util.find_spec("lxt") is None:
        pytest.skip("transformer/explicit.py is LXT's rules: it imports lxt, which this environment lacks")
    modules = sorted(_module_name(p) for p in (PACKAGE / subpackage).rglob("*.py"))
    frameworks = "('tensorflow', 'innvestigate', 'keras')" + (
        "" if subpackage in ("pytorch", "transformer") else " + ('torch',)"
    )
    probe = f"import sys; import {', '.join(modules)}; print(sorted(m for m in {frameworks} if m in sys.modules))"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert imported == "[]", f"importing {subpackage}/ imported {imported}"
