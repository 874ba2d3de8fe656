"""The one place TensorFlow and innvestigate are imported, lazily.

Importing TensorFlow takes seconds; a pytest run that selects no LRP test must
not pay for it, so nothing imports this module's functions until an analysis runs.
"""

from __future__ import annotations

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

    return inn
