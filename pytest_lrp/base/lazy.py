"""numpy and yaml, imported on first use.

pytest imports this plugin in every run, also in one that selects no LRP test.
Importing numpy and yaml there cost about 100 ms of start-up (bench/run.py,
section startup). So the plugin's modules write ``from .lazy import np`` (or
``yaml``) instead of ``import numpy as np``: the name is bound at once, and
numpy is imported the first time an attribute is used, normally in the first
analysis. Annotations such as ``x: np.ndarray`` cost nothing, because every
module has ``from __future__ import annotations``.
tests/test_performance.py checks that importing the plugin imports neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING


class _OnFirstUse:
    def __init__(self, name: str):
        self.__dict__["_name"] = name

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self.__dict__["_name"]), attribute)

    def __repr__(self) -> str:
        return f"<{self.__dict__['_name']}, imported on first use>"


if TYPE_CHECKING:  # type checkers see the modules themselves
    import numpy as np
    import yaml
else:
    np = _OnFirstUse("numpy")
    yaml = _OnFirstUse("yaml")
