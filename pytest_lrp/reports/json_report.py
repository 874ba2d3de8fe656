"""The machine-readable report written with --lrp-report=PATH."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from ..base.atomic import write_atomically
from ..base.tf_runtime import distribution_version, tensorflow_release

FORMAT_VERSION = 1


def versions() -> dict:
    """Versions from package metadata: no import of TensorFlow needed (and innvestigate's
    own __version__ is stale in 2.1.2)."""
    found = {"python": platform.python_version(), "tensorflow": tensorflow_release()}
    # tf_keras is what tf.keras is on TensorFlow 2.16+ (README "Environments"); keras is then Keras 3.
    for name in ("keras", "tf_keras", "innvestigate", "pytest", "pytest-lrp"):
        found[name] = distribution_version(name)
    return found


def write_json_report(path: Path, records: list) -> Path:
    document = {
        "format": FORMAT_VERSION,
        "versions": versions(),
        "results": sorted(records, key=lambda r: r["nodeid"]),
    }
    text = json.dumps(document, indent=2, allow_nan=False)
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")))
