"""The numpy reference on its own: nets worked out by hand, the transposes, property tests."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_lrp.reference import MECHANISMS, ReferenceModel, UnsupportedLayer, UnsupportedRule, explain
from pytest_lrp.reference.ops import AveragePool, Conv, Dense, MaxPool, Windows


def dense_config(sizes, activations, bias=True):
    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, sizes[0]]}}]
    for i, (units, act) in enumerate(zip(sizes[1:], activations)):
        layers.append(
            {"class_name": "Dense", "config": {"name": f"d{i}", "units": units, "activation": act, "use_bias": bias}}
        )
    return {"name": "net", "layers": layers}


# x = (1, 2); W1 = [[1, -1], [2, 1]], b1 = (0.5, 1.5) -> z1 = (5.5, 2.5), both active;
# W2 = [[1], [-1]], b2 = 0.5 -> f(x) = 5.5 - 2.5 + 0.5 = 3.5.
W1, B1 = np.array([[1.0, -1.0], [2.0, 1.0]]), np.array([0.5, 1.5])
W2, B2 = np.array([[1.0], [-1.0]]), np.array([0.5])
X = np.array([[1.0, 2.0]])


@pytest.fixture(scope="module")
def paper_net():
    return ReferenceModel.from_keras(dense_config([2, 2, 1], ["relu", "linear"]), {"d0": [W1, B1], "d1": [W2, B2]})


def test_forward_of_the_paper_net(paper_net):
    assert paper_net.predict(X).tolist() == [[3.5]]


def test_z_rule_by_hand(paper_net):
    result = explain(paper_net, X, "lrp.z", {})
    # top: R = (5.5 * 1, 2.5 * -1) * 3.5 / 3.5; the bias keeps 0.5.
    # first layer: neuron 0 sends (1, 4) * 5.5 / 5.5, neuron 1 sends (-1, 2) * -2.5 / 2.5
    np.testing.assert_allclose(result.heatmap, [[2.0, 2.0]])
    top, first = result.layer("d1"), result.layer("d0")
    np.testing.assert_allclose(top.relevance_in, [3.0])
    np.testing.assert_allclose(top.mechanisms["bias"], [-0.5])
    # neuron 0 keeps 0.5/5.5 of 5.5, neuron 1 keeps 1.5/2.5 of -2.5
    np.testing.assert_allclose(first.mechanisms["bias"], [-0.5 + 1.5])
    assert first.rule == "z" and result.output_relevance.tolist() == [3.5]


def test_epsilon_by_hand(paper_net):
    result = explain(paper_net, X, "lrp.epsilon", {"epsilon": 1.0})
    r1 = np.array([5.5, -2.5]) * 3.5 / 4.5  # denominator 3.5 + 1
    expected = (np.array([1.0, 4.0]) * r1[0] / 6.5) + (np.array([-1.0, 2.0]) * r1[1] / 3.5)
    np.testing.assert_allclose(result.heatmap[0], expected)
    top = result.layer("d1")
    np.testing.assert_allclose(top.mechanisms["bias"], [-0.5 / 4.5 * 3.5])
    np.testing.assert_allclose(top.mechanisms["stabilizer"], [-1.0 / 4.5 * 3.5])


def test_alpha2_beta1_by_hand(paper_net):
    result = explain(paper_net, X, "lrp.alpha_2_beta_1", {})
    # top: activator 5.5 over 5.5 + 0.5, inhibitor -2.5 over -2.5 + 0.5 (bias in both)
    r1 = np.array([2 * 5.5 * 3.5 / 6.0, -(-2.5 * 3.5 / -2.0)])
    np.testing.assert_allclose(result.layer("d1").relevance_in, [r1.sum()])
    # neuron 0: contributions (1, 4), no negative part -> 2 * R; neuron 1: (+2 from x2, -1 from x1)
    n0 = 2 * np.array([1.0, 4.0]) * r1[0] / 5.5
    n1 = 2 * np.array([0.0, 2.0]) * r1[1] / 3.5 - np.array([-1.0, 0.0]) * r1[1] / 0.5
    np.testing.assert_allclose(result.heatmap[0], n0 + n1)
    first = result.layer("d0")
    np.testing.assert_allclose(first.mechanisms["unbalanced"], [r1[0]])  # 2R instead of R
    np.testing.assert_allclose(
        first.mechanisms["bias"], [-2 * 0.5 / 5.5 * r1[0] - 2 * 1.5 / 3.5 * r1[1] + 1.5 / 0.5 * r1[1]]
    )
    assert first.rule == "alpha_beta(2,1)"


def test_issue_273_blows_up_and_is_blamed_on_the_bias():
    # innvestigate issue 273: W = (1, -1), b = -1, x = (1, 1): the inhibitor denominator -1 + 1 == 0
    model = ReferenceModel.from_keras(
        dense_config([2, 1], ["linear"]), {"d0": [np.array([[1.0], [-1.0]]), np.array([-1.0])]}
    )
    result = explain(model, np.ones((1, 2)), "lrp.alpha_2_beta_1", {})
    assert np.abs(result.heatmap).max() > 1e6
    account = result.layer("d0")
    assert abs(account.mechanisms["bias"][0]) > 1e6
    assert abs(account.relevance_in - account.relevance_out - sum(account.mechanisms.values()))[0] < 1e-3


def test_z_plus_drops_a_neuron_without_positive_input():
    model = ReferenceModel.from_keras(
        dense_config([2, 2, 1], ["relu", "linear"]),
        {
            "d0": [np.array([[1.0, -1.0], [1.0, -1.0]]), np.array([0.0, 3.0])],
            "d1": [np.array([[1.0], [1.0]]), np.array([0.0])],
        },
    )
    result = explain(model, np.ones((1, 2)), "lrp.z_plus", {})
    # neuron 1 is active (3 - 2 = 1) through its bias alone: its relevance 1 is dropped
    np.testing.assert_allclose(result.layer("d0").mechanisms["dropped"], [-1.0])
    np.testing.assert_allclose(result.heatmap.sum(), 2.0)


def test_unknown_layer_and_rule_are_refused():
    config = dense_config([2, 1], ["linear"])
    config["layers"].append({"class_name": "Lambda", "config": {"name": "foo"}})
    with pytest.raises(UnsupportedLayer, match=r"layer 'foo' \(Lambda\) has no reference"):
        ReferenceModel.from_keras(config, {"d0": [np.ones((2, 1)), np.zeros(1)]})
    model = ReferenceModel.from_keras(dense_config([2, 1], ["linear"]), {"d0": [np.ones((2, 1)), np.zeros(1)]})
    with pytest.raises(UnsupportedRule):
        explain(model, np.ones((1, 2)), "deconvnet", {})
    with pytest.raises(UnsupportedRule, match="bn_layer_rule"):
        explain(model, np.ones((1, 2)), "lrp.z", {"bn_layer_rule": "Flat"})


def test_importable_without_tensorflow():
    code = (
        "import sys, pytest_lrp.reference; "
        "assert not any(m.split('.')[0] in ('tensorflow', 'innvestigate', 'keras') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the transposes are the adjoints of the forward maps ------------------------------


def _direct_conv2d(x, kernel, stride, dilation, pads):
    x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
    kh, kw = kernel.shape[:2]
    oh = (x.shape[1] - (kh - 1) * dilation - 1) // stride + 1
    ow = (x.shape[2] - (kw - 1) * dilation - 1) // stride + 1
    out = np.zeros((len(x), oh, ow, kernel.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    out[:, i, j] += x[:, i * stride + a * dilation, j * stride + b * dilation] @ kernel[a, b]
    return out


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(4, 9),
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.sampled_from(["valid", "same"]),
    seed=st.integers(0, 2**16),
)
def test_conv_matches_a_direct_loop_and_its_transpose_is_the_adjoint(size, k, stride, dilation, padding, seed):
    if padding == "valid" and (k - 1) * dilation + 1 > size:
        return
    rng = np.random.default_rng(seed)
    x, kernel = rng.normal(size=(2, size, size + 1, 3)), rng.normal(size=(k, k, 3, 4))
    conv = Conv(Windows((k, k), (stride, stride), padding, (dilation, dilation)))
    out = conv.forward(x, kernel)
    pads = conv.w.pads(x.shape[1:3])
    np.testing.assert_allclose(out, _direct_conv2d(x, kernel, stride, dilation, pads), atol=1e-10)
    g = rng.normal(size=out.shape)
    np.testing.assert_allclose((conv.transpose(g, kernel, x.shape) * x).sum(), (out * g).sum())
    depthwise = Conv(Windows((k, k), (stride, stride), padding, (dilation, dilation)), depthwise=True)
    dk = rng.normal(size=(k, k, 3, 2))
    dout = depthwise.forward(x, dk)
    # channel c, multiplier m is output c * 2 + m: a full conv with a block-diagonal kernel
    full = np.zeros((k, k, 3, 6))
    for c in range(3):
        full[:, :, c, 2 * c : 2 * c + 2] = dk[:, :, c]
    np.testing.assert_allclose(dout, conv.forward(x, full), atol=1e-10)
    dg = rng.normal(size=dout.shape)
    np.testing.assert_allclose((depthwise.transpose(dg, dk, x.shape) * x).sum(), (dout * dg).sum())


def test_pooling_windows():
    x = np.arange(2 * 5 * 5 * 1, dtype=float).reshape(2, 5, 5, 1)
    average = AveragePool(Windows((2, 2), (2, 2), "same"))
    out = average.forward(x)
    assert out.shape == (2, 3, 3, 1)
    assert out[0, 2, 2, 0] == x[0, 4, 4, 0]  # 'same' averages only the cells inside
    g = np.random.default_rng(0).normal(size=out.shape)
    np.testing.assert_allclose((average.transpose(g, None, x.shape) * x).sum(), (out * g).sum())
    pool = MaxPool(Windows((2, 2), (2, 2), "valid"))
    ties = np.zeros((1, 2, 2, 1))
    _, argmax = pool.forward(ties)
    back = pool.transpose(np.ones((1, 1, 1, 1)), argmax, ties.shape)
    assert back[0, :, :, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]  # the first of tied maxima
    dense = Dense()
    w = np.random.default_rng(1).normal(size=(3, 4))
    xx, gg = np.ones((2, 3)), np.ones((2, 4))
    np.testing.assert_allclose((dense.transpose(gg, w, xx.shape) * xx).sum(), (dense.forward(xx, w) * gg).sum())


# ---- properties on random small networks ---------------------------------------------


def random_net(rng, sizes, bias_scale):
    weights = {
        f"d{i}": [rng.normal(0, 0.8, (a, b)), rng.normal(0, bias_scale, b)]
        for i, (a, b) in enumerate(zip(sizes, sizes[1:]))
    }
    acts = ["relu"] * (len(sizes) - 2) + ["linear"]
    return ReferenceModel.from_keras(dense_config(sizes, acts), weights)


nets = st.tuples(
    st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(1, 4), st.integers(2, 5), st.integers(0, 2**16)
)
RULES = [
    ("lrp.z", {}),
    ("lrp.epsilon", {"epsilon": 0.3}),
    ("lrp.epsilon", {"bias": False}),
    ("lrp.w_square", {}),
    ("lrp.flat", {}),
    ("lrp.alpha_2_beta_1", {}),
    ("lrp.alpha_2_beta_1_IB", {}),
    ("lrp.alpha_beta", {"alpha": 3, "beta": 2, "bias": False}),
    ("lrp.alpha_1_beta_0", {}),
    ("lrp.z_plus", {}),
    ("lrp.z_plus_fast", {}),
    ("deep_taylor", {}),
    ("deep_taylor.bounded", {"low": -1.0, "high": 1.0}),
    ("lrp.sequential_preset_a_flat", {}),
    ("lrp.sequential_preset_b", {}),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets)
def test_z_on_bias_free_relu_nets_conserves(net):
    hidden, n_out, n_in, seed = net
    rng = np.random.default_rng(seed)
    model = random_net(rng, [n_in, *hidden, n_out], 0.0)
    x = rng.normal(size=(3, n_in))
    result = explain(model, x, "lrp.z", {})
    # a neuron whose inputs are all zero drops its relevance (it has none: z = 0); any other conserves
    dropped = sum(account.mechanisms["dropped"] for account in result.layers)
    np.testing.assert_allclose(result.heatmap.sum(axis=1) - dropped, model.predict(x).max(axis=1), rtol=1e-6, atol=1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets, alpha=st.sampled_from([1.0, 2.0, 3.5]))
def test_alpha_beta_conserves_where_every_neuron_has_both_signs(net, alpha):
    hidden, n_out, n_in, seed = net
    rng = np.random.default_rng(seed)
    model = random_net(rng, [n_in, *hidden, n_out], 0.0)
    x = rng.normal(size=(3, n_in))
    result = explain(model, x, "lrp.alpha_beta", {"alpha": alpha, "beta": alpha - 1, "bias": False})
    for account in result.layers:
        if account.class_name == "Dense":
            both = (account.mechanisms["unbalanced"] == 0) & (account.mechanisms["dropped"] == 0)
            np.testing.assert_allclose(account.relevance_in[both], account.relevance_out[both], rtol=1e-7, atol=1e-9)
    if all((a.mechanisms["unbalanced"] == 0).all() and (a.mechanisms["dropped"] == 0).all() for a in result.layers):
        np.testing.assert_allclose(result.heatmap.sum(axis=1), result.output_relevance, rtol=1e-7)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets, bias_scale=st.sampled_from([0.0, 0.5]))
def test_accounting_sums_to_the_change_for_every_rule(net, bias_scale):
    hidden, n_out, n_in, seed = net
    rng = np.random.default_rng(seed)
    model = random_net(rng, [n_in, *hidden, n_out], bias_scale)
    x = np.maximum(rng.normal(size=(3, n_in)), 0)  # zeros in the input make dropped neurons
    for analyzer, params in RULES:
        result = explain(model, x, analyzer, params)
        total = result.output_relevance.copy()
        for account in result.layers:
            assert set(account.mechanisms) == set(MECHANISMS)
            change = account.relevance_in - account.relevance_out
            explained = sum(account.mechanisms.values())
            scale = np.abs(account.relevance_out) + np.abs(account.relevance_in) + 1e-12
            assert (np.abs(change - explained) <= 1e-9 * scale + 1e-9).all(), (analyzer, account)
            if account.class_name != "InputLayer":
                total = total + explained
        np.testing.assert_allclose(result.heatmap.sum(axis=1), total, rtol=1e-8, atol=1e-8)


def test_integrated_gradients_completeness_and_left_riemann_sum(paper_net):
    # f is piecewise linear along the path; with many steps the sum approaches f(x) - f(0)
    result = explain(paper_net, X, "integrated_gradients", {"steps": 2000})
    np.testing.assert_allclose(result.output_relevance, paper_net.predict(X)[:, 0] - paper_net.predict(0 * X)[:, 0])
    np.testing.assert_allclose(result.heatmap.sum(axis=1), result.output_relevance, rtol=2e-3)
    # one step is the gradient at t = 0 (the reference point) times x, not at x
    one = explain(paper_net, X, "integrated_gradients", {"steps": 1})
    np.testing.assert_allclose(one.heatmap, explain(paper_net, 0 * X, "gradient", {}).heatmap * X)


def _node(class_name, name, inputs, **config):
    return {
        "class_name": class_name,
        "name": name,
        "config": {"name": name, **config},
        "inbound_nodes": [[[source, 0, 0, {}] for source in inputs]] if inputs else [],
    }


def residual_config():
    """A functional net with every layer kind whose accounting is not a Dense's, built without Keras."""
    layers = [
        _node("InputLayer", "in", [], batch_input_shape=[None, 6, 6, 2]),
        _node(
            "Conv2D",
            "conv",
            ["in"],
            filters=3,
            kernel_size=[3, 3],
            strides=[1, 1],
            padding="same",
            dilation_rate=[1, 1],
            activation="relu",
            use_bias=True,
        ),
        _node("BatchNormalization", "bn", ["conv"], axis=[3], epsilon=1e-3, center=True, scale=True),
        _node(
            "Conv2D",
            "side",
            ["in"],
            filters=3,
            kernel_size=[1, 1],
            strides=[1, 1],
            padding="valid",
            dilation_rate=[1, 1],
            activation="relu",
            use_bias=True,
        ),
        _node("Add", "add", ["bn", "side"]),
        _node("ReLU", "relu", ["add"]),
        _node("MaxPooling2D", "pool", ["relu"], pool_size=[2, 2], strides=[2, 2], padding="valid"),
        _node("ZeroPadding2D", "pad", ["pool"], padding=[[1, 1], [1, 1]]),
        _node("AveragePooling2D", "avg", ["pad"], pool_size=[2, 2], strides=[1, 1], padding="same"),
        _node(
            "DepthwiseConv2D",
            "dw",
            ["avg"],
            kernel_size=[2, 2],
            strides=[1, 1],
            padding="valid",
            depth_multiplier=2,
            dilation_rate=[1, 1],
            activation="relu",
            use_bias=True,
        ),
        _node("GlobalAveragePooling2D", "gap", ["dw"]),
        _node("GlobalMaxPooling2D", "gmp", ["dw"]),
        _node("Concatenate", "cat", ["gap", "gmp"], axis=-1),
        _node("Dense", "out", ["cat"], units=3, activation="linear", use_bias=True),
    ]
    return {"name": "res", "layers": layers, "input_layers": [["in", 0, 0]], "output_layers": [["out", 0, 0]]}


def residual_weights(rng):
    return {
        "conv": [rng.normal(0, 0.5, (3, 3, 2, 3)), rng.normal(0, 0.3, 3)],
        "bn": [rng.uniform(0.5, 1.5, 3), rng.normal(0, 0.3, 3), rng.normal(0, 0.3, 3), rng.uniform(0.3, 2, 3)],
        "side": [rng.normal(0, 0.5, (1, 1, 2, 3)), rng.normal(0, 0.3, 3)],
        "dw": [rng.normal(0, 0.5, (2, 2, 3, 2)), rng.normal(0, 0.3, 6)],
        "out": [rng.normal(0, 0.5, (12, 3)), rng.normal(0, 0.3, 3)],
    }


def test_forward_of_the_residual_config_by_hand():
    rng = np.random.default_rng(5)
    model = ReferenceModel.from_keras(residual_config(), residual_weights(rng))
    x = rng.uniform(0, 1, (2, 6, 6, 2))
    acts = model.forward(x)
    w = residual_weights(np.random.default_rng(5))
    side = np.maximum(x @ w["side"][0][0, 0] + w["side"][1], 0)
    np.testing.assert_allclose(acts["side"], side)
    gamma, beta, mean, var = w["bn"]
    np.testing.assert_allclose(acts["bn"], gamma * (acts["conv"] - mean) / np.sqrt(var + 1e-3) + beta)
    relu = np.maximum(acts["bn"] + side, 0)
    np.testing.assert_allclose(acts["pool"], relu.reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4)))
    assert acts["pad"].shape == (2, 5, 5, 3) and acts["avg"].shape == (2, 5, 5, 3)
    np.testing.assert_allclose(
        acts["avg"][:, -1, -1], acts["pad"][:, -1, -1]
    )  # 'same': the corner window holds one cell
    assert acts["dw"].shape == (2, 4, 4, 6) and acts["out"].shape == (2, 3)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16))
def test_accounting_identity_on_every_layer_kind(seed):
    rng = np.random.default_rng(seed)
    model = ReferenceModel.from_keras(residual_config(), residual_weights(rng))
    x = np.maximum(rng.normal(0.3, 0.5, (2, 6, 6, 2)), 0)
    for analyzer, params in RULES:
        result = explain(model, x, analyzer, params)
        total = result.output_relevance.copy()
        for account in result.layers:
            change = account.relevance_in - account.relevance_out
            explained = sum(account.mechanisms.values())
            scale = np.abs(account.relevance_out) + np.abs(account.relevance_in) + 1e-12
            assert (np.abs(change - explained) <= 1e-9 * scale + 1e-9).all(), (analyzer, account.name)
            if account.class_name in ("MaxPooling2D", "Flatten", "Concatenate", "GlobalMaxPooling2D", "InputLayer"):
                assert not any(np.any(v) for v in account.mechanisms.values())  # conserve by construction
            total = total + (explained if account.class_name != "InputLayer" else 0)
        np.testing.assert_allclose(result.heatmap.reshape(2, -1).sum(axis=1), total, rtol=1e-7, atol=1e-7)


# ---- the speed-ups change nothing but rounding ---------------------------------------


def _ig_point_by_point(model, x, steps, reference=0.0):
    """Integrated gradients as its definition reads: one plain gradient per path point, no batching, no reuse."""
    neuron = model.predict(x, cache=False).argmax(axis=1)
    total = np.zeros_like(x)
    for k in range(steps):
        point = reference + k / steps * (x - reference)
        total += explain(model, point, "gradient", {}, "index", neuron, keep_maps=False).heatmap
    return total / steps * (x - reference)


def _residual_with_offsets(rng, bias_scale: float) -> ReferenceModel:
    """The residual test net with its biases and BatchNormalization offset scaled to ``bias_scale`` (0.3 as drawn;
    0.0: none, a positively homogeneous network)."""
    weights = residual_weights(rng)
    for name in ("conv", "side", "dw", "out"):
        weights[name][1] = weights[name][1] * bias_scale / 0.3
    weights["bn"][1:3] = [weights["bn"][1] * bias_scale / 0.3, weights["bn"][2] * bias_scale / 0.3]  # BN's offset
    return ReferenceModel.from_keras(residual_config(), weights)


@pytest.mark.parametrize("bias_scale", [0.0, 0.3])
def test_integrated_gradients_batched_and_reusing_patterns_equals_point_by_point(bias_scale, monkeypatch):
    explain_module = sys.modules["pytest_lrp.reference.explain"]  # the package's `explain` is the function
    rng = np.random.default_rng(11)
    model = _residual_with_offsets(rng, bias_scale)
    x = rng.uniform(0, 1, (3, 6, 6, 2))
    expected = _ig_point_by_point(model, x, 16)
    backward_points = []
    run = explain_module._Backward.run
    monkeypatch.setattr(
        explain_module._Backward,
        "run",
        lambda self, head, accounts: backward_points.append(len(head)) or run(self, head, accounts),
    )
    point_bytes = sum(a.nbytes for a in model.forward(x[:1], products=False, cache=False).values())
    monkeypatch.setattr(explain_module, "IG_CHUNK_BYTES", 5 * point_bytes)  # 48 points: 1, then chunks of 5
    result = explain(model, x, "integrated_gradients", {"steps": 16})
    np.testing.assert_allclose(result.heatmap, expected, rtol=1e-12, atol=1e-14)
    if bias_scale == 0.0:
        # positively homogeneous: per sample, t = 0 (everything off) and t > 0 (the pattern of x) only
        assert sum(backward_points) <= 6
    else:
        assert sum(backward_points) > 6


@pytest.mark.parametrize("bias_scale", [0.0, 0.3])
def test_integrated_gradients_walks_only_t0_and_x_on_a_positively_homogeneous_network(bias_scale, monkeypatch):
    """Without biases and BatchNormalization offsets, t x has x's gradient for every t > 0: two forward passes per
    sample instead of `steps`, with the sum of the definition (point by point); with them, every point is walked."""
    explain_module = sys.modules["pytest_lrp.reference.explain"]
    rng = np.random.default_rng(5)
    model = _residual_with_offsets(rng, bias_scale)
    assert model.positively_homogeneous() == (bias_scale == 0.0)
    x = rng.uniform(0, 1, (3, 6, 6, 2))
    expected = _ig_point_by_point(model, x, 32)
    walked = []
    gradients = explain_module._path_gradients
    monkeypatch.setattr(
        explain_module,
        "_path_gradients",
        lambda model, points, *rest: walked.append(len(points)) or gradients(model, points, *rest),
    )
    result = explain(model, x, "integrated_gradients", {"steps": 32})
    np.testing.assert_allclose(result.heatmap, expected, rtol=1e-12, atol=1e-14)
    assert sum(walked) == (2 * len(x) if bias_scale == 0.0 else 32 * len(x))
    # a reference input other than 0 is not on a ray through the origin: every point again
    walked.clear()
    explain(model, x, "integrated_gradients", {"steps": 32, "reference_inputs": 0.25})
    assert sum(walked) == 32 * len(x)


def test_forward_pass_is_shared_by_equal_inputs_and_read_only():
    rng = np.random.default_rng(2)
    model = ReferenceModel.from_keras(residual_config(), residual_weights(rng))
    x = rng.uniform(0, 1, (2, 6, 6, 2))
    first = model.forward(x.astype(np.float32))  # converted to float64 first: the same pass as for x in float64
    again = model.forward(x.astype(np.float32).astype(np.float64))
    assert again["conv"] is first["conv"] and not again["conv"].flags.writeable
    x32 = x.astype(np.float32)
    x32[0, 0, 0, 0] += 1.0  # other values: computed anew
    other = model.forward(x32)
    assert other["conv"] is not first["conv"]
    np.testing.assert_array_equal(model.forward(x.astype(np.float32), cache=False)["out"], first["out"])
    # explain on the shared pass gives what a fresh model gives
    fresh = ReferenceModel.from_keras(residual_config(), residual_weights(np.random.default_rng(2)))
    x = x.astype(np.float32).astype(np.float64)
    model.forward(x)
    for analyzer, params in RULES[:6]:
        np.testing.assert_array_equal(
            explain(model, x, analyzer, params).heatmap, explain(fresh, x, analyzer, params).heatmap
        )


def test_large_dense_kernels_made_slice_by_slice_equal_the_whole(monkeypatch):
    from pytest_lrp.reference import rules

    rng = np.random.default_rng(4)
    sizes = [9, 7, 5, 3]
    weights = {
        f"d{i}": [rng.normal(0, 0.8, (a, b)), rng.normal(0, 0.3, b)] for i, (a, b) in enumerate(zip(sizes, sizes[1:]))
    }
    config = dense_config(sizes, ["relu", "relu", "linear"])
    x = rng.normal(size=(4, 9))
    whole = [explain(ReferenceModel.from_keras(config, weights), x, analyzer, params) for analyzer, params in RULES]
    monkeypatch.setattr(rules, "PART_ENTRIES", 1)  # every Dense kernel is "large"
    monkeypatch.setattr(rules.KernelPart, "ROWS_ENTRIES", 10)  # slices of 1-2 rows
    model = ReferenceModel.from_keras(config, weights)
    for (analyzer, params), expected in zip(RULES, whole):
        sliced = explain(model, x, analyzer, params)
        np.testing.assert_allclose(sliced.heatmap, expected.heatmap, rtol=1e-12, atol=1e-14)
        for a, b in zip(sliced.layers, expected.layers):
            for name in MECHANISMS:
                np.testing.assert_allclose(a.mechanisms[name], b.mechanisms[name], rtol=1e-12, atol=1e-14)
    # nothing kernel-sized kept (only w_square's and flat's denominators, one value per output)
    assert all(kept.size < layer.kernel.size for layer in model.layers for kept in layer.variants.values())
