"""torch, zennit and captum, imported on first use: a missing one stops the run with one line saying what to install."""

from __future__ import annotations

import importlib

from ..base.errors import LrpUsageError

INSTALL = "pip install 'pytest-lrp[torch]' (torch, zennit and captum)"


def library(name: str):
    """The module ``name`` (torch, zennit, captum, or one of their submodules)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise LrpUsageError(
            f"PyTorch models need {name.split('.')[0]}, which this Python environment cannot import "
            f"({type(exc).__name__}: {exc}); {INSTALL}"
        ) from None


def torch():
    return library("torch")


def versions_line() -> str:
    """The report's line on the PyTorch libraries, read from their metadata without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "zennit", "captum"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return "lrp: PyTorch models: " + ", ".join(found)
