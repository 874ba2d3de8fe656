"""One rule, three implementations: innvestigate (Keras), zennit and captum (PyTorch) on the same network.

The Keras CNN of conftest's conv_nets and its PyTorch twin with the weights copied (a Dense kernel's rows
reordered for torch's channels-first Flatten). Each library's epsilon, z+ and alpha-beta rules agree with the
numpy reference of that library's formula, within float32 rounding (the `reference` check, real runs); the
references then say where the libraries agree with each other and where they differ by formula, and by how much.
Needs TensorFlow with innvestigate and torch with zennit and captum in one environment (CI's torch one).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zennit")  # before TensorFlow: triton, which zennit's torchvision loads, crashes after it
pytest.importorskip("captum")
try:  # through the plugin's one TensorFlow import site: it makes tf.keras Keras 2 (tf_keras) first, as in its runs
    from pytest_lrp.base.tf_runtime import innvestigate

    innvestigate()
except ImportError:
    pytest.skip("needs TensorFlow with innvestigate beside torch", allow_module_level=True)

TWIN = """
from pathlib import Path

import numpy as np
import torch
from torch import nn


def twin():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias={bias}), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, bias={bias}), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3, bias={bias}),
    )
    weights = np.load(Path(__file__).with_name("weights.npz"))
    net.load_state_dict({{key: torch.as_tensor(weights[key]) for key in weights.files}})
    return net
"""


def torch_weights(keras_weights: list, bias: bool) -> dict:
    """The Keras CNN's weights for its PyTorch twin: kernels (kh, kw, in, out) -> (out, in, kh, kw); the Dense
    kernel's rows from Keras' (h, w, c) order of the flattened 2x2x4 map to torch's (c, h, w)."""
    weights = list(keras_weights)
    take = lambda: weights.pop(0)  # noqa: E731
    state = {}
    for index, kind in ((0, "conv"), (3, "conv"), (6, "dense")):
        kernel = take()
        if kind == "conv":
            state[f"{index}.weight"] = kernel.transpose(3, 2, 0, 1)
        else:
            rows = kernel.reshape(2, 2, 4, 3).transpose(2, 0, 1, 3).reshape(16, 3)
            state[f"{index}.weight"] = rows.T
        if bias:
            state[f"{index}.bias"] = take()
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in state.items()}


@pytest.fixture(params=["biased", "bias_free"])
def twins(request, pytester, conv_nets, inputs_8x8, tensorflow_imported_once):
    name = request.param
    keras = tensorflow_imported_once.keras.models.load_model(conv_nets[name], compile=False)
    pytester.makepyfile(nets=TWIN.format(bias=name == "biased"))
    np.savez(pytester.path / "weights.npz", **torch_weights(keras.get_weights(), name == "biased"))
    x = np.load(inputs_8x8)["x"]
    np.savez(pytester.path / "nchw.npz", x=np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return name, keras, x


KERAS_RULES = """
defaults:
  checks: [reference]
rules:
  - {id: epsilon, analyzer: lrp.epsilon, params: {epsilon: 1.0e-6}}
  - {id: zplus, analyzer: lrp.z_plus}
  - {id: alpha-beta, analyzer: lrp.alpha_2_beta_1}
"""
TORCH_RULES = """
defaults:
  checks: [reference]
rules:
  - {id: epsilon, analyzer: zennit.rule.epsilon, params: {epsilon: 1.0e-6}}
  - {id: zplus, analyzer: zennit.rule.zplus}
  - {id: alpha-beta, analyzer: zennit.rule.alpha_beta, params: {alpha: 2, beta: 1}}
  - {id: captum-epsilon, analyzer: captum.lrp, params: {rule: epsilon, epsilon: 1.0e-6}}
  - {id: captum-zplus, analyzer: captum.lrp, params: {rule: alpha1_beta0}}
"""


def test_each_library_agrees_with_the_reference_of_its_formula(pytester, twins, conv_nets, inputs_8x8):
    name, _, _ = twins
    pytester.makefile(".yaml", keras_rules=KERAS_RULES, torch_rules=TORCH_RULES)
    keras = pytester.runpytest(
        "keras_rules.yaml", f"--lrp-model={conv_nets[name]}", f"--lrp-inputs={inputs_8x8}", "-p", "no:randomly"
    )
    keras.assert_outcomes(passed=3)
    twin = pytester.runpytest(
        "torch_rules.yaml", "--lrp-model=nets.py:twin", "--lrp-inputs=nchw.npz", "-p", "no:randomly"
    )
    twin.assert_outcomes(passed=5)


def test_keras_and_pytorch_models_in_one_session(pytester, twins, conv_nets):
    # One rule file for both: each model gets its framework's rules. In a fresh process the plugin loads torch's
    # triton before TensorFlow (TensorFlow first crashes the process when triton loads).
    name, _, _ = twins
    pytester.makefile(
        ".yaml",
        rules=f"""
        defaults:
          models: ["{conv_nets[name]}", "nets.py:twin"]
          input_shape: [1, 8, 8]
          checks: [reference]
        rules:
          - {{id: innvestigate, analyzer: lrp.epsilon, params: {{epsilon: 1.0e-6}}}}
          - {{id: zennit, analyzer: zennit.rule.epsilon, params: {{epsilon: 1.0e-6}}}}
        """,
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def twin_module(folder):
    spec = importlib.util.spec_from_file_location(f"twin_{folder.name}", folder / "nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_where_the_formulas_agree_and_where_they_differ(twins, pytester):
    # The twins compute the same function; the references of the three libraries' formulas then agree exactly
    # where the formulas are the same and differ where they are not (bias handling), by amounts the docs quote.
    from pytest_lrp.pytorch.graph import reference_model
    from pytest_lrp.reference import ReferenceModel, explain

    name, keras, x = twins
    folder = pytester.path
    from_keras = ReferenceModel.from_keras(
        keras.get_config(), {layer.name: layer.get_weights() for layer in keras.layers}
    )
    from_torch = reference_model(twin_module(folder).twin().eval(), (1, 8, 8))
    np.testing.assert_allclose(from_torch.predict(x), from_keras.predict(x), rtol=1e-10, atol=1e-12)
    neurons = from_keras.predict(x).argmax(axis=1)

    def heat(model, analyzer, params=None):
        return explain(model, x, analyzer, params or {}, "index", neurons).heatmap

    def differ(a, b) -> float:
        return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))

    epsilon = heat(from_keras, "lrp.epsilon", {"epsilon": 1e-6})
    assert differ(epsilon, heat(from_torch, "zennit.rule.epsilon", {"epsilon": 1e-6})) < 1e-12
    # captum puts its epsilon rule on max pooling too (the maximum keeps y / (y + eps) of the relevance): apart
    # from where a window's maximum is small, the same numbers
    captum_epsilon = heat(from_torch, "captum.lrp", {"rule": "epsilon", "epsilon": 1e-6})
    assert 0 < differ(epsilon, captum_epsilon) < 1e-2
    zplus = heat(from_keras, "lrp.z_plus")
    zennit_zplus = heat(from_torch, "zennit.rule.zplus")
    captum_zplus = heat(from_torch, "captum.lrp", {"rule": "alpha1_beta0"})
    alpha_beta = heat(from_keras, "lrp.alpha_2_beta_1")
    zennit_alpha_beta = heat(from_torch, "zennit.rule.alpha_beta", {"alpha": 2, "beta": 1})
    if name == "bias_free":  # inputs >= 0 and no biases: z+ is one formula in all three, alpha-beta in two, up to
        # the stabiliser (zennit adds 1e-6 sign(d), captum 1e-9; innvestigate divides as it is, safely at 0)
        for other in (zennit_zplus, captum_zplus):
            assert differ(zplus, other) < 1e-4
        assert differ(alpha_beta, zennit_alpha_beta) < 1e-4
    else:  # innvestigate's z+ ignores the bias, zennit's keeps b+, captum's the whole bias; alpha-beta splits it
        assert differ(zplus, zennit_zplus) > 1e-3 and differ(zplus, captum_zplus) > 1e-3
        assert differ(alpha_beta, zennit_alpha_beta) > 1e-3
