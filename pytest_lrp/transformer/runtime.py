"""transformers and LXT, imported on first use: a missing one stops the run with one line saying what to install."""

from __future__ import annotations

import importlib
import os

from ..base.errors import LrpUsageError

INSTALL = "pip install 'pytest-lrp[transformers]' (transformers and lxt, with torch)"


def prefer_torch() -> None:
    """transformers imports TensorFlow where it is installed, for its TF models only: seconds, and TensorFlow
    loaded before torch's triton crashes the process (base/tf_runtime.py). pytest-lrp explains torch models,
    so before a model file runs (it may import transformers) and before transformers is imported here,
    ``USE_TF=0``, unless the user set USE_TF."""
    os.environ.setdefault("USE_TF", "0")


def library(name: str):
    """The module ``name`` (transformers, lxt, or one of their submodules)."""
    prefer_torch()
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise LrpUsageError(
            f"transformers' models need {name.split('.')[0]}, which this Python environment cannot import "
            f"({type(exc).__name__}: {exc}); {INSTALL}"
        ) from None


def is_transformer(module) -> bool:
    """A transformers ``PreTrainedModel``, known without importing transformers."""
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.") for cls in type(module).__mro__
    )
