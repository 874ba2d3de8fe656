"""The one place TensorFlow and innvestigate are imported, lazily.

Importing TensorFlow takes seconds; a pytest run that selects no LRP test must
not pay for it, so nothing imports this module's functions until an analysis runs.
"""

from __future__ import annotations

import gc
import os
import warnings


def tensorflow():
    # Must be set before the first import, or TensorFlow prints a screen of C++
    # warnings per analyzer build and CUDA registration errors on a CPU-only
    # machine (level 3); a user's explicit setting is kept. Real failures still
    # raise Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation warnings TensorFlow raises about itself on import
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def innvestigate():
    tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import innvestigate as inn

    _freeze_once()
    return inn


_frozen = []


def _freeze_once() -> None:
    """Exempt what is alive now, above all TensorFlow's ~300k module objects, from later collections.

    analysis.py runs a full gc.collect() after each analysis to free its graph; without
    this each of those scanned TensorFlow too, 0.25-0.35 s per rule on the example CNN
    (bench/). Objects alive now are modules, pytest's session and the collected tests,
    which live to the end of the run anyway.
    """
    if not _frozen:
        _frozen.append(True)
        gc.collect()
        gc.freeze()
