"""The keyword arguments each innvestigate analyzer accepts, read without importing it.

A misspelt parameter (``epsilom: 0.1``) should stop the run at collection, like
a misspelt analyzer name, not after TensorFlow has loaded and the model has been
rebuilt. Importing innvestigate would pull in TensorFlow, so the ``__init__``
signatures are read from its source with ``ast``.

Analyzers pass ``**kwargs`` up their base classes, so a class accepts its own
named parameters plus whatever the class its ``super().__init__`` reaches
accepts, minus the keywords it fixes itself in that call (``LRPZ`` passes
``rule=``; giving ``rule`` again is a "multiple values" TypeError).
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from pathlib import Path

from .analyzer_names import analyzer_names


@functools.lru_cache(maxsize=1)
def _sources() -> tuple | None:
    """(class name -> ClassDef, analyzer name -> class name), or None when the source cannot be read."""
    try:
        spec = importlib.util.find_spec("innvestigate")
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(spec.submodule_search_locations[0], "analyzer")
        classes: dict = {}
        for file in sorted(folder.rglob("*.py")):
            for node in ast.parse(file.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef):
                    classes.setdefault(node.name, node)
        registry = _registry(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
    except Exception:  # not installed, moved, unparsable: the analyzer itself will complain at run time
        return None
    return (classes, registry) if registry else None


def _registry(tree: ast.Module) -> dict:
    for node in tree.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        found = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id == "analyzers" and isinstance(found, ast.Dict):
            return {
                key.value: value.id
                for key, value in zip(found.keys, found.values)
                if isinstance(key, ast.Constant) and isinstance(value, ast.Name)
            }
    return {}


@functools.cache
def accepted_params(analyzer: str) -> frozenset | None:
    """Keyword arguments ``analyzer`` accepts (private ``_x`` ones left out); None when unknown."""
    sources = _sources()
    if sources is None or analyzer not in sources[1]:
        return None
    classes, registry = sources
    names = _class_params(registry[analyzer], classes, depth=0)
    return None if names is None else frozenset(n for n in names if not n.startswith("_"))


def _class_params(name: str, classes: dict, depth: int) -> set | None:
    node = classes.get(name)
    if node is None or depth > 20:
        return None
    init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
    base = _base_name(node)
    if init is None:  # inherits __init__ unchanged
        return _class_params(base, classes, depth + 1) if base else None
    args = init.args
    own = {a.arg for a in (args.posonlyargs + args.args)[2:] + args.kwonlyargs}  # after self and the model
    if args.kwarg is None:
        return own
    if base in (None, "object"):
        return own
    inherited = _class_params(base, classes, depth + 1)
    if inherited is None:
        return None
    return own | (inherited - _fixed_in_super_call(init))


def _base_name(node: ast.ClassDef) -> str | None:
    for base in node.bases:
        if isinstance(base, ast.Name):
            return base.id
        if isinstance(base, ast.Attribute):
            return base.attr
    return None


def _fixed_in_super_call(init: ast.FunctionDef) -> set:
    for call in ast.walk(init):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "__init__"
            and isinstance(call.func.value, ast.Call)
            and getattr(call.func.value.func, "id", None) == "super"
        ):
            return {k.arg for k in call.keywords if k.arg is not None}
    return set()


def unknown_param_message(analyzer: str, params: dict, reserved) -> str | None:
    """The complaint about the first parameter ``analyzer`` does not accept, or None."""
    accepted = accepted_params(analyzer) if analyzer in analyzer_names() else None
    if accepted is None:
        return None
    for name in params:
        if name in accepted:
            continue
        offered = sorted(n for n in accepted if n not in reserved)
        match = difflib.get_close_matches(str(name), offered, n=1)
        hint = f"did you mean '{match[0]}'?" if match else f"it accepts: {', '.join(offered)}"
        return f"analyzer '{analyzer}' does not accept '{name}' ({hint})"
    return None
