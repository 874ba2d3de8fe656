"""pytest-lrp's speed-ups of innvestigate 2.1.2 and Keras 2 (keras 2.14 / tf_keras 2.21): same numbers, less time.

All of it is scoped: `analyzer_build` is entered around building and running one
analyzer and undoes everything on leaving, also when the build raises; `prepare_graph`
only touches the fresh graph of one analysis, which is discarded afterwards. Nothing
leaks into the user's own Keras code in the same process (tests/test_speedup.py).

1. Speed. innvestigate applies Keras layers to plain TensorFlow tensors in graph mode;
   for every constant input Keras' `create_keras_history` evaluates the constant through
   a new session callable over the whole, growing graph (`backend.function([], t)([])`):
   quadratic in depth, 180 s of MobileNetV2's 189 s `lrp.z` build. Keras' own switch
   `base_layer_utils._UNSAFE_GRAPH_OP_LAYER_CREATION` keeps the tensors instead; the
   price (op layers that cannot be re-serialized with get_config) does not matter for an
   analyzer that lives for one analysis. Heatmaps are bitwise identical.
2. Speed. In a graph, Keras' learning phase is a placeholder, so every BatchNormalization
   and Dropout becomes a `tf.cond`; innvestigate's gradient-based reverse passes then
   build a gradient function graph per cond (52 on MobileNetV2) and the session has to
   compile them: half of input_t_gradient's remaining build. Setting the learning phase
   of the analysis graph to 0 (inference, which the placeholder defaults to anyway)
   makes Keras pick the inference branch while building. Bitwise identical heatmaps.
3. Speed. innvestigate copies layers (`backend.graph.get_layer_from_config`): it builds each copy,
   which creates variables with the layer's random initializers, and then gives the copy the
   original's weights. The discarded random values are still generated in the session when the
   first analyze call initializes all variables: VGG16 (138M parameters) spent 15-30 s there
   per rule. The copies are built with zeros instead; the values are overwritten either way.
   Mostly they are not even overwritten: innvestigate then swaps the copy's new variables for the
   original's (`update_symbolic_weights`), and the orphaned ones, read by no op, were still filled
   with zeros in the session: 3.7 s and 1 GB (two copies of 138M parameters) per alpha-beta analysis
   of VGG16. They are marked initialized for Keras, so they never get memory; an op that read one
   would fail loudly (uninitialized value), never compute with other values.
   The same holds for the model itself, rebuilt from its config in every analysis graph and then
   given the file's weights (`rebuild_config`): Keras initialized its variables randomly first,
   3.3 s of VGG16's 4.8 s rebuild per rule.

Workarounds for innvestigate's crashes (layer names, a final Softmax layer, its model checks) are in
upstream_fixes.py; `analyzer_build` enters its model-check patch, so one block scopes both.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from importlib import import_module, util
from pathlib import Path

from ..base.tf_runtime import at_least_2_16, keras_package
from .upstream_fixes import patched_model_checks

SWITCH = "_UNSAFE_GRAPH_OP_LAYER_CREATION"
# PYTEST_LRP_SPEEDUP=0 turns 1., 2. and 3. off (the normal Keras path), for bench/ to measure both in one run.
ENABLED_VARIABLE = "PYTEST_LRP_SPEEDUP"


def enabled() -> bool:
    return os.environ.get(ENABLED_VARIABLE, "1") != "0"


def _switch_module(tf):
    try:
        module = import_module(f"{keras_package(tf)}.src.engine.base_layer_utils")
    except ImportError:
        return None
    return module if hasattr(module, SWITCH) else None


@contextmanager
def analyzer_build(tf, inn, overridden: list | None = None):
    """Keras' switch on, layer copies without random initial values, innvestigate's model checks explained and
    overridden where the rules are well defined (upstream_fixes.patched_model_checks, which appends to and
    yields ``overridden``): for the duration of the block only."""
    overridden = [] if overridden is None else overridden
    module = _switch_module(tf) if enabled() else None
    graph_module = inn.backend.graph
    saved = (graph_module.get_layer_from_config, getattr(module, SWITCH, None))
    if enabled():
        graph_module.get_layer_from_config = _built_with_zeros(tf, saved[0])
    if module is not None:
        setattr(module, SWITCH, True)
    try:
        with patched_model_checks(inn, overridden):
            yield overridden
    finally:
        graph_module.get_layer_from_config = saved[0]
        if module is not None:
            setattr(module, SWITCH, saved[1])


def _built_with_zeros(tf, get_layer_from_config):
    """innvestigate 2.1.2's get_layer_from_config, building the copy with zero initial values and leaving
    the variables it built and then replaced by the original's uninitialized (3. above)."""

    def copy_built_with_zeros(old_layer, new_config, *args, **kwargs):
        before = {id(variable) for variable in tf.compat.v1.global_variables()}
        new_layer = get_layer_from_config(old_layer, _zero_initializers(new_config), *args, **kwargs)
        used = {id(weight) for weight in new_layer.weights}
        for variable in tf.compat.v1.global_variables():
            if id(variable) not in before and id(variable) not in used:
                variable._keras_initialized = True  # Keras' mark (backend._initialize_variables): skip its initializer
        return new_layer

    return copy_built_with_zeros


def rebuild_config(config: dict) -> dict:
    """The model's config to rebuild it from in an analysis graph: zero initial values, since the file's
    weights replace them right away (3. above); the model's own config when the speed-up is off."""
    return _zero_initializers(config) if enabled() else config


def _zero_initializers(config):
    """``config`` (a layer's or a whole model's, nested) with every initializer replaced by Keras' Zeros."""
    if isinstance(config, dict):
        return {
            key: (
                {"class_name": "Zeros", "config": {}}
                if key.endswith("_initializer") and isinstance(value, (dict, str))
                else _zero_initializers(value)
            )
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_zero_initializers(value) for value in config]
    return config


# Where 2. was checked to leave every heatmap bitwise identical: Keras 2.14 (TensorFlow 2.14). Under tf_keras 2.21
# (TensorFlow 2.21) the inference branch outside a cond rounds differently (lrp.z sums 278.03766 vs 278.03778 on a
# residual CNN), so there the learning phase stays a placeholder, as in innvestigate run the usual way.
LEARNING_PHASE_ROOTS = ("keras",)


def prepare_graph(tf) -> None:
    """Before the model is rebuilt in the analysis graph (the current default graph): inference learning phase (2. above)."""
    if enabled() and keras_package(tf) in LEARNING_PHASE_ROOTS:
        _backend(tf).deprecated_internal_set_learning_phase(0)  # the public one only adds a deprecation warning


def _backend(tf):
    return import_module(f"{keras_package(tf)}.src.backend")


def header_lines() -> list:
    """A report header line when the installed Keras 2 lacks the switch (without importing TensorFlow)."""
    root = "tf_keras" if at_least_2_16() else "keras"
    origin = package_origin(root)
    if origin is None:
        return []
    source = Path(origin).parent / "src" / "engine" / "base_layer_utils.py"
    try:
        present = SWITCH in source.read_text()
    except OSError:
        present = False
    if present:
        return []
    return [
        f"lrp: this {root} has no {SWITCH} switch; analyzer builds on deep networks run at innvestigate's own (slow) speed"
    ]


def package_origin(name: str):
    """The __init__.py of an installed top-level package, found without importing it."""
    spec = util.find_spec(name)
    return spec.origin if spec is not None else None
