"""Model files written by Keras 3, translated to the tf.keras 2 model innvestigate 2.1.2 analyzes.

innvestigate 2.1.2 works on tf.keras 2 models only, and tf.keras 2 cannot read a Keras 3
file (its InputLayer has ``batch_shape``, dtypes are ``DTypePolicy`` objects, functional
nodes are ``{"args", "kwargs"}``). So the Keras 3 config is read as JSON
(keras3_archive.py), translated layer by layer into the tf.keras 2 config of the same
network, built with ``from_config`` in safe mode, and given the file's weights, each array
checked against the shape tf.keras 2 expects. No code stored in the file runs: only the
layer classes listed in TRANSLATED are built, and a custom, Lambda or unknown class is
refused naming the layer and its class, trusted file or not.

A translation can be wrong without an error (a transposed square kernel still runs): when
the inputs file carries the outputs Keras 3 computed (``y``), modelfile.py checks them.

What the translation leaves out on purpose: initializers, regularizers and constraints
(training-time only; the weights come from the file). A Keras 3 option that changes what
a layer computes and that tf.keras 2 does not have (``lora_rank``, a quantized dtype
policy) is refused, not dropped.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from ..base.errors import LrpUsageError, shown
from ..base.tf_runtime import tensorflow
from .keras3_archive import MODEL_CLASSES, first_line, read_keras3_file

# The layers innvestigate 2.1.2 can analyze that tf.keras 2 has under the same name
# with the same weights layout.
TRANSLATED = frozenset(
    """InputLayer Dense Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose
    DepthwiseConv1D DepthwiseConv2D SeparableConv1D SeparableConv2D
    MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D
    GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D
    GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D
    Flatten Reshape Permute RepeatVector ZeroPadding1D ZeroPadding2D ZeroPadding3D
    Cropping1D Cropping2D Cropping3D UpSampling1D UpSampling2D UpSampling3D
    Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout
    Activation ReLU LeakyReLU ELU Softmax BatchNormalization
    Add Subtract Multiply Average Maximum Minimum Concatenate
    Rescaling Normalization""".split()  # the last two: keras.applications' EfficientNets start with them
)
# Keras 3 options that tf.keras 2 lacks, and the value under which leaving them out changes nothing.
NEUTRAL = {"lora_rank": None, "lora_alpha": None, "quantization_config": None, "optional": False, "synchronized": False}
# Keras 3 names for options tf.keras 2 has under another name.
RENAMED = {("InputLayer", "batch_shape"): "batch_input_shape", ("LeakyReLU", "negative_slope"): "alpha"}
# Keyword arguments every tf.keras 2 layer accepts (keras.engine.base_layer.Layer.__init__).
BASE_KWARGS = frozenset(
    "name trainable dtype dynamic input_dim input_shape batch_input_shape batch_size weights activity_regularizer autocast".split()
)
TRAINING_ONLY = ("_initializer", "_regularizer", "_constraint")
FLOAT_POLICIES = frozenset("float16 bfloat16 float32 float64 mixed_float16 mixed_bfloat16".split())


def load_keras3_model(path: Path):
    """The tf.keras 2 model equivalent to a Keras 3 file, with its weights (built eagerly)."""
    path = Path(path)
    translated = []
    source = read_keras3_file(path, check_config=lambda config: translated.append(translate(path, config)))
    sequential, config = translated[0]
    keras = tensorflow().keras
    from .trust import deserialization_scope

    cls = keras.Sequential if sequential else keras.Model
    try:
        with deserialization_scope(trusted=False):
            model = cls.from_config(config)
    except Exception as exc:  # Keras raises many types for a config it cannot build
        raise LrpUsageError(
            f"{shown(path)}: the Keras {source.keras_version} model, translated to tf.keras 2, cannot be built "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from None
    _set_weights(path, model, source.weights)
    return model


def translate(path: Path, model_config: dict) -> tuple:
    """(is Sequential, tf.keras 2 config) of a Keras 3 model config."""
    class_name = model_config.get("class_name")
    config = model_config.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise LrpUsageError(f"{shown(path)}: the model config has no list of layers")
    if class_name == "Sequential":
        translated = {
            "name": config.get("name", "sequential"),
            "layers": [_layer(path, entry) for entry in config["layers"]],
        }
        if config.get("build_input_shape") is not None:
            translated["build_input_shape"] = _plain(config["build_input_shape"])
        return True, translated
    layers = []
    for entry in config["layers"]:
        layer = _layer(path, entry)
        layer["name"] = layer["config"]["name"]
        layer["inbound_nodes"] = _nodes(path, entry)
        layers.append(layer)
    return False, {
        "name": config.get("name", "model"),
        "layers": layers,
        "input_layers": _references(config.get("input_layers")),
        "output_layers": _references(config.get("output_layers")),
    }


def _layer(path: Path, entry) -> dict:
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise LrpUsageError(f"{shown(path)}: a layer entry of the model config is not a mapping with a config")
    class_name = str(entry.get("class_name"))
    config = entry["config"]
    name = str(config.get("name", entry.get("name", "?")))
    where = f"{shown(path)}: layer '{name}' ({class_name})"
    module = str(entry.get("module") or "keras.layers")
    registered = entry.get("registered_name")
    if not module.startswith("keras.") or registered not in (None, class_name):
        raise LrpUsageError(
            f"{where} is a custom class ({registered or module}); its code is not in the file and pytest-lrp "
            "translates only built-in Keras 3 layers"
        )
    if class_name in MODEL_CLASSES:
        raise LrpUsageError(
            f"{where} is a nested model; pytest-lrp translates Keras 3 models whose layers are plain layers"
        )
    if class_name == "Lambda":
        raise LrpUsageError(f"{where} is a Lambda layer: its Python code cannot be carried from Keras 3 to tf.keras 2")
    if class_name not in TRANSLATED:
        raise LrpUsageError(
            f"{where}: pytest-lrp cannot translate this class from Keras 3 to tf.keras 2 "
            "(it translates the layers innvestigate 2.1.2 analyzes)"
        )
    keras = tensorflow().keras
    accepted = _accepted_keys(getattr(keras.layers, class_name))
    translated = {}
    for key, value in config.items():
        key = RENAMED.get((class_name, key), key)
        if key.endswith(TRAINING_ONLY):
            continue
        value = _plain(value)
        if key == "dtype":
            value = _dtype(where, value)
        elif key == "activation":
            value = _activation(where, value, keras)
        if key not in accepted:
            if key in NEUTRAL and value == NEUTRAL[key]:
                continue
            raise LrpUsageError(f"{where}: option {key}={value!r} of Keras 3 has no equivalent in tf.keras 2")
        translated[key] = value
    return {"class_name": class_name, "config": translated}


def _accepted_keys(cls) -> frozenset:
    # Along the class hierarchy: tf.keras 2's BatchNormalization passes renorm & co. on as **kwargs.
    names = set(BASE_KWARGS)
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names.update(inspect.signature(klass.__init__).parameters)
    return frozenset(names - {"self", "args", "kwargs"})


def _dtype(where: str, value):
    # Keras 3 writes {"class_name": "DTypePolicy", "config": {"name": "float32"}}, tf.keras 2 a string.
    if isinstance(value, dict):
        inner = value.get("config") if isinstance(value.get("config"), dict) else {}
        value = inner.get("name")
    if value is not None and value not in FLOAT_POLICIES:
        raise LrpUsageError(f"{where}: dtype policy {value!r} (quantized?) has no equivalent in tf.keras 2")
    return value


def _activation(where: str, value, keras):
    if not isinstance(value, str):
        raise LrpUsageError(f"{where}: activation {value!r} is not a built-in activation named by a string")
    try:
        keras.activations.get(value)
    except Exception:
        raise LrpUsageError(f"{where}: activation {value!r} of Keras 3 has no equivalent in tf.keras 2") from None
    return value


def _plain(value):
    """JSON of Keras 3's serialization without its wrappers (``__tuple__``)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__tuple__" and isinstance(value.get("config"), dict):
            return [_plain(v) for v in value["config"].get("value", [])]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _nodes(path: Path, entry: dict) -> list:
    """Keras 3's ``{"args": [tensor or [tensors]], "kwargs": {...}}`` as tf.keras 2's ``[[layer, node, tensor, kwargs]]``."""
    name = entry.get("name") or entry["config"].get("name")
    where = f"{shown(path)}: layer '{name}' ({entry.get('class_name')})"
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise LrpUsageError(
            f"{where} is called {len(nodes)} times (a shared layer); pytest-lrp translates each layer called once"
        )
    translated = []
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("args"), list) or len(node["args"]) != 1:
            raise LrpUsageError(f"{where}: a call with other than one positional argument cannot be translated")
        kwargs = {k: v for k, v in (node.get("kwargs") or {}).items() if not (k == "mask" and v is None)}
        if _holds_tensor(kwargs):
            raise LrpUsageError(f"{where}: a call with tensors as keyword arguments cannot be translated")
        inputs = node["args"][0]
        tensors = inputs if isinstance(inputs, list) else [inputs]
        translated.append([[*_history(where, tensor), kwargs] for tensor in tensors])
    return translated


def _history(where: str, tensor) -> list:
    history = tensor.get("config", {}).get("keras_history") if isinstance(tensor, dict) else None
    if tensor.get("class_name") != "__keras_tensor__" or not isinstance(history, list) or len(history) != 3:
        raise LrpUsageError(f"{where}: an input of the layer is not a tensor of another layer")
    return list(history)


def _holds_tensor(value) -> bool:
    if isinstance(value, dict):
        return value.get("class_name") == "__keras_tensor__" or any(_holds_tensor(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_tensor(v) for v in value)
    return False


def _references(value) -> list:
    # One input is written as ["image", 0, 0], several as [["a", 0, 0], ["b", 0, 0]].
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [value]
    return value or []


def _set_weights(path: Path, model, weights: dict) -> None:
    for layer in model.layers:
        expected = layer.weights
        stored = weights.get(layer.name, [])
        where = f"{shown(path)}: layer '{layer.name}' ({type(layer).__name__})"
        if len(stored) != len(expected):
            raise LrpUsageError(
                f"{where} has {len(stored)} weight arrays in the file where tf.keras 2 expects {len(expected)}"
            )
        for i, (array, variable) in enumerate(zip(stored, expected)):
            if tuple(array.shape) != tuple(variable.shape):
                raise LrpUsageError(
                    f"{where}: weight {i} has shape {tuple(array.shape)} in the file, tf.keras 2 expects {tuple(variable.shape)}"
                )
        if stored:
            layer.set_weights(stored)
            if hasattr(layer, "finalize_state"):
                # tf.keras 2's Normalization computes its mean and variance tensors from the
                # weights when built; in eager mode set_weights alone leaves them stale (Keras' own
                # loader calls this after loading weights too).
                layer.finalize_state()
