"""Workarounds for innvestigate 2.1.2 (and Keras 2.14 / tf_keras): crashes that are accidents of naming or
wrapping, not of any rule's formula. Every change pytest-lrp makes to innvestigate's behaviour is here.

Speed-ups that leave every number as it is live in speedup.py; this module is about analyses innvestigate
2.1.2 would refuse or crash on, run the usual way, although the rule is well defined on the model.

All of it is scoped to one analysis: the name counters belong to the analysis' own, discarded graph;
the softmax is stripped from the analysis' own copy of the model; `patched_model_checks` puts innvestigate's
`AnalyzerBase._do_model_checks` back on leaving, also when the build raises. Where innvestigate runs the
usual way on an equivalent model, the heatmaps are bitwise identical (tests/test_upstream_fixes.py):

1. Layer names (`reserve_layer_names`). "The name "input_1" is used 2 times in the model" and the same for
   "add", "re_lu", ...: innvestigate names the layers it creates by Keras' per-graph counters; in a fresh graph
   they start below the names the model was saved with.
2. A final `Softmax()` layer (`without_softmax`). `innvestigate.model_wo_softmax` copies the last layer
   without its `activation` argument, which a Softmax layer does not take:
   TypeError: ('Keyword argument not understood:', 'activation').
3. Model checks (`patched_model_checks`). A failing "warning"-type check raises an empty NotImplementedError;
   LRP's "only tested for convolutional neural networks" refuses ordinary `ReLU()` and other layers.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import import_module

from ..base.tf_runtime import keras_package

INNVESTIGATE_VERSION = "2.1.2"
OVERRIDE = "disable_model_checks: true"

# ---- 1. layer names ---------------------------------------------------------------------------------------------

NUMBERED = re.compile(r"^(.*)_(\d+)$")


def _name_parts(name: str):
    """'add_3' -> ('add', 3); 'add' -> ('add', 0): Keras numbers layer names from zero."""
    match = NUMBERED.match(name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


def reserve_layer_names(tf, model) -> None:
    """Keras' name counters of the current graph moved past every layer name of ``model`` (innvestigate 2.1.2).

    Avoids "ValueError: The name "input_1" is used 2 times in the model" (integrated_gradients on a model whose
    input is Keras 2's default `input_1`: its wrapper model creates a new `Input`) and "The name "add" is used
    2 times" (LRP and Deep Taylor on a model with Keras' default names `add`, `re_lu`: the layers innvestigate
    adds). A model rebuilt in a fresh graph keeps its saved names while the graph's counters start at zero;
    innvestigate run the usual way crashes the same way in a fresh process. Keras keeps two counters in one
    per-graph map: `InputLayer` names `input_N` by `get_uid("input")` (one-based, a string key), every other
    layer by `unique_object_name` (zero-based, key (namespace, name)). Both are moved; the model's layers keep
    their names. Scope: the map belongs to the analysis' graph, discarded with it.
    """
    uids = _backend(tf).get_default_graph_uid_map()
    for layer in model.layers:
        prefix, number = _name_parts(layer.name)
        uids[prefix] = max(uids[prefix], number)  # get_uid(prefix) then returns number + 1 ('input_1' -> 'input_2')
        key = ("", prefix)  # unique_object_name's key: (namespace, name), zero-based
        uids[key] = max(uids[key], number + 1)


def _backend(tf):
    return import_module(f"{keras_package(tf)}.src.backend")


# ---- 2. a final softmax -----------------------------------------------------------------------------------------


def without_softmax(inn, keras_model):
    """(``keras_model`` without its final softmax, whether one was stripped): the model innvestigate explains.

    A final `Softmax()` layer is cut off here: innvestigate 2.1.2's `model_wo_softmax` would copy it without
    its `activation` argument and crash with "TypeError: ('Keyword argument not understood:', 'activation')".
    The model then ends at the layer before it, exactly as `model_wo_softmax` treats an `Activation('softmax')`
    layer (a model from the same inputs to the softmax layer's input tensor, named like the model), so the
    explained outputs are the logits. A softmax as the last layer's own activation, or an `Activation`
    layer, goes through innvestigate's own `model_wo_softmax`.
    """
    last = keras_model.layers[-1]
    if _is_softmax_layer(inn, last):
        return _cut_before(inn, keras_model), True
    if inn.backend.checks.contains_activation(last, "softmax"):
        return keep_last_layer_name(inn.model_wo_softmax(keras_model), last), True
    return keras_model, False


def _is_softmax_layer(inn, layer) -> bool:
    softmax = inn.backend.checks.klayers.Softmax
    return isinstance(layer, softmax)


def _cut_before(inn, keras_model):
    """innvestigate's pre_output_tensors for an Activation layer (the layer's input tensor), for a Softmax layer."""
    tensors = []
    for output in keras_model.outputs:
        layer, node_index, _ = output._keras_history
        tensors.append(layer.get_input_at(node_index))
    return inn.backend.graph.kmodels.Model(inputs=keras_model.inputs, outputs=tensors, name=keras_model.name)


def keep_last_layer_name(model, original):
    """innvestigate 2.1.2's model_wo_softmax replaces a last layer with a softmax activation by a copy that Keras
    names by its counter ('dense_1' for the user's 'dense'); the reports show the user's name.
    A separate Activation('softmax') is dropped instead, and the layer before it keeps its own name."""
    last = model.layers[-1]
    if type(last) is type(original):
        last._name = original.name
    return model


# ---- 3. model checks --------------------------------------------------------------------------------------------


class ModelCheckRefused(Exception):
    """innvestigate refuses the model on one of its "warning"-type checks (which `disable_model_checks` skips)."""

    def __init__(self, message: str, layers: list):
        self.check_message = " ".join(message.split())
        self.layers = layers
        shown_layers = ", ".join(layers[:5]) + (f" and {len(layers) - 5} more" if len(layers) > 5 else "")
        super().__init__(
            f'innvestigate\'s model check says "{self.check_message}" (layers {shown_layers}); '
            f"to analyze anyway, set `{OVERRIDE}` in the rule's params"
        )


@dataclass
class CheckOverride:
    """A warning-type check innvestigate failed, overridden because every layer it names has a well-defined rule."""

    message: str
    layers: list = field(default_factory=list)

    def note(self) -> str:
        shown_layers = ", ".join(self.layers[:5]) + (
            f" and {len(self.layers) - 5} more" if len(self.layers) > 5 else ""
        )
        return (
            f'innvestigate\'s model check "{self.message}" about layers {shown_layers} was overridden: '
            "their rules are well defined (pytest-lrp's numpy reference implements them)"
        )


@contextmanager
def patched_model_checks(inn, overridden: list):
    """innvestigate 2.1.2's `AnalyzerBase._do_model_checks` replaced for the block; restored on leaving.

    innvestigate's own: a failing check of type "warning" warns and then raises `NotImplementedError()` without
    a message ("NotImplementedError: no details"); LRP adds one, "LRP is only tested for convolutional neural
    networks.", that fails for `ReLU()` layers (and the presets' "not advised for non-ReLU activations").
    Here: "exception"-type checks raise as in innvestigate. When every failing check is of type "warning" and
    every layer they name is one whose rule is well defined (`well_defined`), the analysis runs as with
    `disable_model_checks=True` (the checks change no number) and a `CheckOverride` per check is appended to
    ``overridden``; otherwise `ModelCheckRefused` carries the check's message, its layers and the override.
    """
    base = inn.analyzer.base.AnalyzerBase
    saved = base.__dict__["_do_model_checks"]

    def _do_model_checks(self) -> None:
        if not self._disable_model_checks and self._model_checks:
            checks = self._model_checks
            warned = []
            for layers, check in zip(
                inn.backend.graph.model_contains(self._model, [c["check"] for c in checks]), checks
            ):
                if not layers:
                    continue
                if check["check_type"] == "exception":
                    raise inn.analyzer.base.NotAnalyzeableModelException(
                        f"{check['message']}\nCheck triggered by layers: {layers}"
                    )
                warned.append((check, layers))
            for check, layers in warned:
                if not all(well_defined(layer) for layer in layers):
                    raise ModelCheckRefused(check["message"], [layer.name for layer in layers])
            overridden.extend(
                CheckOverride(" ".join(check["message"].split()), [layer.name for layer in layers])
                for check, layers in warned
            )
        self._model_check_done = True

    base._do_model_checks = _do_model_checks
    try:
        yield overridden
    finally:
        base._do_model_checks = saved


def well_defined(layer) -> bool:
    """Whether ``layer``'s relevance rule is well defined: pytest-lrp's numpy reference implements the layer with
    its settings (a plain `ReLU()`, `Add`, pooling, BatchNormalization, ...; not `ReLU(max_value=6)`, not a tanh)."""
    try:
        from ..reference.model import KNOWN, Layer, UnsupportedLayer, _setup
    except ImportError:  # the reference's layer table moved: refuse, as innvestigate does, rather than guess
        return False

    class_name = type(layer).__name__
    if class_name not in KNOWN:
        return False
    try:
        _setup(Layer(layer.name, class_name, layer.get_config(), list(layer.get_weights())))
    except (UnsupportedLayer, KeyError, ValueError, IndexError):
        return False
    return True
