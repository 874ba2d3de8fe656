"""The one place TensorFlow and innvestigate are imported, lazily; and which Keras ``tf.keras`` is.

Importing TensorFlow takes seconds; a pytest run that selects no LRP test must
not pay for it, so nothing imports this module's functions until an analysis runs.

innvestigate 2.1.2 is written against Keras 2. TensorFlow 2.16 and later make
``tf.keras`` Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` is set when TensorFlow is
imported (then it is the ``tf_keras`` package, Keras 2); the choice holds for the
whole process. ``choose_legacy_keras`` makes it for sessions that run LRP tests.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import os
import sys
import warnings

from .errors import LrpUsageError

LEGACY_KERAS = "TF_USE_LEGACY_KERAS"
TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos", "tensorflow-aarch64")
_set_by_us = []
_torch_expected: list = []


def choose_legacy_keras() -> None:
    """Set TF_USE_LEGACY_KERAS=1 if TensorFlow >= 2.16 is not imported yet and the user did not set it.

    Called once the session is known to run LRP tests, and before every TensorFlow
    import the plugin makes. A session without LRP tests, a TensorFlow imported
    before (its choice is made) and a user's own setting are left alone.
    """
    if "tensorflow" in sys.modules or LEGACY_KERAS in os.environ:
        return
    if tensorflow_release() is not None and not at_least_2_16():
        return  # tf.keras is Keras 2 there anyway
    os.environ[LEGACY_KERAS] = "1"
    _set_by_us.append(True)


def keras_line() -> str:
    """One line for the report: which Keras ``tf.keras`` is (or will be) in this session, and why."""
    tf_module = sys.modules.get("tensorflow")
    if tf_module is not None and hasattr(tf_module, "__version__"):
        tf_version, package = tf_module.__version__, keras_package(tf_module)
    else:  # not imported yet: what the import will give
        tf_version = tensorflow_release() or "not installed"
        package = "tf_keras" if _legacy_keras_requested() and at_least_2_16() else "keras"
    version = distribution_version(package) or "not installed"
    line = f"lrp: tf.keras is Keras {version} ({package}) under TensorFlow {tf_version}"
    if _set_by_us:
        line += f"; {LEGACY_KERAS}=1 set by pytest-lrp"
    problem = keras_3_problem()
    return line + (f"; {problem}" if problem else "")


def keras_3_problem():
    """Why innvestigate cannot run in this process (tf.keras is Keras 3), or None."""
    tf_module = sys.modules.get("tensorflow")
    if tf_module is None:
        if not at_least_2_16() or LEGACY_KERAS not in os.environ or _legacy_keras_requested():
            return None
        return (
            f"{LEGACY_KERAS}={os.environ[LEGACY_KERAS]} in the environment makes tf.keras Keras 3, "
            f"which innvestigate 2.1.2 cannot analyze: unset it or set it to 1 for LRP runs"
        )
    if not hasattr(tf_module, "__version__") or _keras_major(tf_module) != 3:
        return None
    return (
        f"TensorFlow {tf_module.__version__} was imported with tf.keras = Keras 3 before pytest-lrp could set "
        f"{LEGACY_KERAS}=1 (innvestigate 2.1.2 needs Keras 2): set {LEGACY_KERAS}=1 yourself, "
        f"or run the LRP tests in a session of their own (pytest -m lrp)"
    )


def expect_torch() -> None:
    """The session tests PyTorch models too: torch's triton must load before TensorFlow (_triton_first)."""
    _torch_expected.append(True)


def _triton_first() -> None:
    """TensorFlow (2.16 to 2.21 seen) and triton, which torch loads for torchvision and so for zennit, crash the
    process with a segmentation fault when triton's extension loads after TensorFlow's; the other order works.
    Where the session uses torch too (imported already, or PyTorch models collected), triton is loaded first."""
    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    if "torch" not in sys.modules and not _torch_expected:
        return
    if importlib.util.find_spec("triton") is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module("triton")


def tensorflow():
    choose_legacy_keras()
    _triton_first()
    # Must be set before the first import, or TensorFlow prints a screen of C++
    # warnings per analyzer build and CUDA registration errors on a CPU-only
    # machine (level 3); a user's explicit setting is kept. Real failures still
    # raise Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation warnings TensorFlow raises about itself on import
        import tensorflow as tf

    problem = keras_3_problem()
    if problem:
        raise LrpUsageError(problem)
    tf.get_logger().setLevel("ERROR")
    return tf


def innvestigate():
    tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import innvestigate as inn

    _freeze_once()
    return inn


def keras_package(tf_module) -> str:
    """The package tf.keras comes from: 'keras' (Keras 2 before TensorFlow 2.16, Keras 3 after) or 'tf_keras'.

    Read from a class's module (reading it resolves TensorFlow's lazy tf.keras); tf.keras's own
    __name__ is 'tensorflow.keras' once something imported tensorflow.keras.models.
    """
    return tf_module.keras.layers.Layer.__module__.split(".")[0]


def _keras_major(tf_module) -> int:
    version = distribution_version(keras_package(tf_module)) or "0"
    return int(version.split(".")[0])


def tensorflow_release():
    """The installed TensorFlow's version, read without importing it; None if not found."""
    return next(filter(None, map(distribution_version, TF_DISTRIBUTIONS)), None)


def at_least_2_16() -> bool:
    """Whether the installed TensorFlow makes tf.keras Keras 3 unless told otherwise (unknown: assume so)."""
    release = tensorflow_release()
    if release is None:
        return True
    major_minor = tuple(int(part) for part in release.split(".")[:2] if part.isdigit())
    return major_minor >= (2, 16)


def _legacy_keras_requested() -> bool:
    """TensorFlow's own test of the variable (tensorflow/__init__.py); unset counts as requested: we will set it."""
    return os.environ.get(LEGACY_KERAS, "1") in ("1", "true", "True")


def distribution_version(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_frozen = []


def _freeze_once() -> None:
    """Exempt what is alive now, above all TensorFlow's ~300k module objects, from later collections.

    analysis.py runs a full gc.collect() after each analysis to free its graph; without
    this each of those scanned TensorFlow too, a large part of a small rule's time. Objects alive now are modules, pytest's session and the collected tests,
    which live to the end of the run anyway.
    """
    if not _frozen:
        _frozen.append(True)
        gc.collect()
        gc.freeze()
