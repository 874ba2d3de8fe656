"""A model named by Python code rather than a file: ``models.py:make_net`` or ``torchvision.models:resnet18``.

Such a name stands where a Keras file's path does (``--lrp-model``, ``defaults.models``), so it behaves like
one where the rest of the plugin reads a path: ``stem`` (the test ids' model name), ``parent.name`` (the
prefix when two names collide), ``str()`` (messages, reports) and ``exists()``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import shown

# "file.py:name" or "package.module:name"; a Windows drive ("C:\\models\\m.h5") has a separator after the colon.
_SPEC = re.compile(r"^(?P<source>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_]*)$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class PythonModel:
    """``source`` is an absolute ``.py`` path or an importable module name; ``attr`` the name in it."""

    source: str
    attr: str

    @property
    def is_file(self) -> bool:
        return self.source.endswith(".py")

    @property
    def stem(self) -> str:
        return self.attr

    @property
    def parent(self) -> Path:
        # For colliding names: "models.make_net" (file) or "torchvision.models.resnet18" (module).
        return Path(Path(self.source).stem if self.is_file else self.source)

    def exists(self) -> bool:
        return Path(self.source).is_file() if self.is_file else True

    def __str__(self) -> str:
        if self.is_file:
            return f"{shown(self.source)}:{self.attr}"
        return f"{self.source}:{self.attr}"


def python_model(text: str, base: Path) -> PythonModel | None:
    """The PythonModel ``text`` names (a ``.py`` file relative to ``base``), or None for a model file's path."""
    match = _SPEC.match(str(text))
    if match is None:
        return None
    source, attr = match["source"], match["attr"]
    if source.endswith(".py"):
        return PythonModel(os.path.abspath(base / source), attr)
    if _MODULE.match(source) and not (base / source).exists():
        return PythonModel(source, attr)
    return None
