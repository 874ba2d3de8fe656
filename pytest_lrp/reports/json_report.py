"""The machine-readable report written with --lrp-report=PATH."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from ..base.atomic import write_atomically

FORMAT_VERSION = 1


def versions() -> dict:
    """Versions from package metadata: no import of TensorFlow needed (and innvestigate's
    own __version__ is stale in 2.1.2)."""
    found = {"python": platform.python_version()}
    for name, distribution in (("tensorflow", "tensorflow"), ("keras", "keras"), ("innvestigate", "innvestigate"),
                               ("pytest", "pytest"), ("pytest-lrp", "pytest-lrp")):
        try:
            found[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_json_report(path: Path, records: list) -> Path:
    document = {
        "format": FORMAT_VERSION,
        "versions": versions(),
        "results": sorted(records, key=lambda r: r["nodeid"]),
    }
    text = json.dumps(document, indent=2, allow_nan=False)
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")))
