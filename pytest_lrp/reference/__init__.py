"""An independent numpy (float64) reference of innvestigate 2.1.2's rules, and leak accounting.

What lives here: a Keras model rebuilt from its config and weights (model.py), the linear
maps of windowed layers and their transposes (ops.py), the LRP/Deep Taylor rules as terms
with the split of each layer's change in relevance into mechanisms (rules.py), and the
rule choice per layer, the backward pass and the gradient family (explain.py).

It may import numpy and pytest_lrp.base only: never TensorFlow, torch or the libraries it checks, so that
it stays an independent check of them (written from the LRP papers and the libraries' documented
conventions, which explain.py, rules.py and libraries.py list). zennit's and captum's rules
(libraries.py) run on a model the PyTorch backend reads into these layers (ReferenceModel.from_layers).

    model = ReferenceModel.from_keras(keras_model.get_config(), {l.name: l.get_weights() ...})
    result = explain(model, x, "lrp.alpha_2_beta_1", {})
    result.heatmap, result.layers[0].mechanisms["bias"], ...

Accounting identity, per layer and sample: relevance_in - relevance_out == sum(mechanisms)
(keys in MECHANISMS; a loss is negative). Gradient analyzers have no mechanisms.
"""

from .explain import ANALYZERS, LayerAccount, ReferenceResult, explain
from .model import Layer, ReferenceModel, UnsupportedLayer
from .rules import MECHANISMS, UnsupportedRule

__all__ = [
    "ANALYZERS",
    "MECHANISMS",
    "Layer",
    "LayerAccount",
    "ReferenceModel",
    "ReferenceResult",
    "UnsupportedLayer",
    "UnsupportedRule",
    "explain",
]
