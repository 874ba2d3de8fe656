"""What a model file may make Python do when it is loaded, checked before it is loaded.

pytest-lrp runs in CI on model files that other people wrote. Keras stores a
``Lambda`` layer as marshalled Python bytecode that runs on load, and a class
that is not a built-in Keras layer means code from outside Keras runs. The
legacy loader (``.h5``, SavedModel) has no safe mode, so the model config is
read here as JSON first and such layers are refused unless the user says the
file is trusted (``--lrp-trust-model`` / ``lrp_trust_model``).

A file written by Keras 3 never gets here: keras3.py translates its config without
deserializing anything, and refuses custom and Lambda layers whether trusted or not.

A SavedModel folder is refused unless trusted: its TensorFlow graphs run as
stored (they may read or write files) and cannot be vetted from their config.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ..base.errors import LrpUsageError, shown

OPT_IN = "refused unless you trust the file (--lrp-trust-model, ini lrp_trust_model)"
MODEL_CLASSES = ("Sequential", "Functional", "Model")
# Keys under which a wrapper layer (TimeDistributed, Bidirectional) keeps the layers it wraps.
WRAPPED_LAYER_KEYS = ("layer", "forward_layer", "backward_layer")


def check_before_loading(path: Path, trusted: bool) -> None:
    """Raise a one-line LrpUsageError for a file that is no model, or that would run code and is not trusted."""
    path = Path(path)
    if path.is_dir():
        if not trusted:
            raise LrpUsageError(
                f"{shown(path)}: a SavedModel folder holds TensorFlow graphs that run as stored and cannot be checked "
                f"before loading; {OPT_IN}, or save the model as .keras or .h5"
            )
        return
    config = read_model_config(path)
    if trusted:
        return
    for name, class_name in _layers(config):
        if class_name == "Lambda":
            raise LrpUsageError(
                f"{shown(path)}: layer '{name}' is a Lambda layer, whose Python code is stored in the file and runs "
                f"when the model is loaded; {OPT_IN}"
            )
        if not _built_in(class_name):
            raise LrpUsageError(
                f"{shown(path)}: layer '{name}' has class '{class_name}', which is not a built-in Keras layer "
                f"(loading it runs code from outside Keras); {OPT_IN}"
            )


def read_model_config(path: Path) -> dict:
    """The model's architecture as stored in an .h5 or .keras file, read as plain JSON."""
    import h5py

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as file:
            raw = file.attrs.get("model_config")
        if raw is None:
            raise LrpUsageError(
                f"{shown(path)}: an HDF5 file without a model config (weights only?); save it with model.save()"
            )
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    elif zipfile.is_zipfile(path) and path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise LrpUsageError(f"{shown(path)}: a .keras archive without config.json")
            text = archive.read("config.json").decode("utf-8")
    else:
        raise LrpUsageError(
            f"{shown(path)}: not a Keras model file (expected an HDF5 .h5/.hdf5 file, a .keras archive or a SavedModel folder)"
        )
    try:
        config = json.loads(text)
    except ValueError:
        raise LrpUsageError(f"{shown(path)}: the stored model config is not valid JSON") from None
    if not isinstance(config, dict):
        raise LrpUsageError(f"{shown(path)}: the stored model config is not a model")
    return config


def _layers(entry: dict) -> Iterator[tuple]:
    """(name, class name) of every layer in a model config, nested models and wrapped layers included."""
    if not isinstance(entry, dict):
        return
    class_name = entry.get("class_name")
    config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    name = config.get("name", entry.get("name", "?"))
    if class_name in MODEL_CLASSES:
        for layer in config.get("layers") or []:
            yield from _layers(layer)
        return
    yield str(name), str(class_name)
    for key in WRAPPED_LAYER_KEYS:
        yield from _layers(config.get(key))


def _built_in(class_name: str) -> bool:
    from ..base.tf_runtime import tensorflow

    layer = getattr(tensorflow().keras.layers, class_name, None)
    return isinstance(layer, type) and issubclass(layer, tensorflow().keras.layers.Layer)


def deserialization_scope(trusted: bool):
    """Keras' safe mode around ``from_config``: Lambda bytecode is refused unless the file is trusted."""
    import contextlib
    import importlib

    from ..base.tf_runtime import keras_package, tensorflow

    try:
        # The safe mode of the Keras that tf.keras is: keras 2.13-2.15, or tf_keras from TensorFlow
        # 2.16 on (the package `keras` is Keras 3 there, whose switch would change nothing).
        library = importlib.import_module(f"{keras_package(tensorflow())}.src.saving.serialization_lib")
        return library.SafeModeScope(safe_mode=not trusted)
    except (ImportError, AttributeError):  # Keras before 2.13: no safe mode
        return contextlib.nullcontext()
