"""LXT's patches, applied for one analysis and undone after it.

``lxt.efficient.monkey_patch`` (lxt 2.1) replaces methods of classes and functions of transformers' modeling
modules for the whole process, and cannot undo it: a GPT-2 map patches ``torch.nn.LayerNorm.forward`` itself,
and the CP-LRP maps write into transformers' attention registry that every model family shares. A test session
explains one model with several rules (AttnLRP, CP-LRP, the unpatched baseline) and may test plain PyTorch
models beside it, so each analysis runs inside ``lxt_patched``: it records what the map's targets hold, lets
LXT patch, and puts every attribute back (added ones removed) when the analysis is done, failed or not.
LXT's "Failed to patch ..." warnings (it warns where a target is patched already) are collected for the
report instead of reaching stderr.
"""

from __future__ import annotations

import contextlib
import types
import warnings

_MISSING = object()
# Where transformers keeps its attention functions: a module attribute LXT replaces (AttnLRP) or a registry
# object whose mappings it writes into (CP-LRP).
_REGISTRY = "ALL_ATTENTION_FUNCTIONS"
_MAPPINGS = ("_global_mapping", "_local_mapping")


@contextlib.contextmanager
def lxt_patched(patch_map: dict):
    """Apply ``patch_map`` (LXT's format: target class or module -> ``patch(target) -> bool``); yields the list
    that collects LXT's warnings, one line each."""
    saved = [_snapshot(target) for target in patch_map]
    notes: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for target, patch in patch_map.items():
                if not patch(target):
                    name = getattr(target, "__name__", repr(target))
                    notes.append(f"LXT could not patch {name} (already patched)")
        notes += [str(w.message) for w in caught if "patch" in str(w.message).lower()]
        yield notes
    finally:
        for restore in reversed(saved):
            restore()


def _snapshot(target):
    """A function that puts ``target``'s own attributes back as they are now."""
    before = dict(vars(target))
    registry = before.get(_REGISTRY) if isinstance(target, types.ModuleType) else None
    mappings = {
        name: dict(getattr(registry, name)) for name in _MAPPINGS if isinstance(getattr(registry, name, None), dict)
    }

    def restore() -> None:
        now = vars(target)
        for name in [n for n in now if n not in before]:
            if not name.startswith("__"):
                delattr(target, name)
        for name, value in before.items():
            if now.get(name, _MISSING) is not value and not name.startswith("__"):
                setattr(target, name, value)
        for name, content in mappings.items():
            mapping = getattr(registry, name)
            mapping.clear()
            mapping.update(content)

    return restore
