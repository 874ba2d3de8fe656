"""The numpy reference on PyTorch models: zennit's and captum's rules against their formulas, faults caught.

Real runs (pytester) of small networks written to disk as a user writes them: the `reference` check passes on
every rule the reference knows, an unsupported module skips with one line, leaks are split by mechanism and
declared with `leaks:`, and faults injected into zennit and captum (a changed parameter, a transposed kernel,
a wrong stabiliser sign, a rule that keeps negative weights) fail the reference check, also where
conservation still holds.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zennit")
pytest.importorskip("captum")

NETS = '''
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


def _statistics(net):
    """BatchNorm statistics and affine parameters as training leaves them, not the identity."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net


def cnn():
    torch.manual_seed(0)
    return _statistics(nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10), nn.Softmax(dim=1),
    ))


def cnn_without_bias():
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(32, 10, bias=False),
    )


class TinyResNet(nn.Module):
    """torchvision's own BasicBlock, twice, one with a downsampling shortcut: what ResNetCanonizer rewrites."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2, downsample=down))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet():
    torch.manual_seed(5)
    return _statistics(TinyResNet())


class Dense(nn.Module):
    """DenseNet's pattern: concatenation, a ReLU and the pooling written as functions in forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 4, 3, padding=1)
        self.fc = nn.Linear(9, 3)

    def forward(self, x):
        x = torch.cat([x, self.conv1(x)], 1)
        x = torch.nn.functional.relu(torch.cat([x, self.conv2(x)], 1))
        x = torch.nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.fc(torch.flatten(x, 1))


def dense():
    torch.manual_seed(8)
    return Dense()


class Mobile(nn.Module):
    """MobileNetV3's and EfficientNet's pieces: a depthwise convolution, Hardswish, a squeeze-excitation block
    (pooling, two 1x1 convolutions, Hardsigmoid, the product in forward), stochastic depth and a residual sum."""

    def __init__(self):
        super().__init__()
        from torchvision.ops import StochasticDepth

        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.SiLU())
        self.squeeze = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 1), nn.Hardsigmoid()
        )
        self.drop = StochasticDepth(0.2, "row")
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.depthwise(x)
        y = self.squeeze(y) * y
        x = self.drop(y) + x
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def mobile():
    torch.manual_seed(9)
    return _statistics(Mobile())


def gelu_mlp():
    torch.manual_seed(6)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 3))
'''

RULES = """
defaults:
  checks: [conservation, reference]
rules:
  - {id: eps, analyzer: zennit.rule.epsilon, params: {epsilon: 1.0e-6}}
  - {id: zplus, analyzer: zennit.rule.zplus}
  - {id: ab, analyzer: zennit.rule.alpha_beta, params: {alpha: 2, beta: 1}}
  - {id: gamma, analyzer: zennit.rule.gamma, params: {gamma: 0.25}}
  - {id: wsquare, analyzer: zennit.rule.wsquare}
  - {id: flat, analyzer: zennit.rule.flat}
  - {id: zbox, analyzer: zennit.rule.zbox, params: {low: -3.0, high: 3.0}}
  - {id: epf, analyzer: zennit.epsilon_plus_flat}
  - {id: epf-merged, analyzer: zennit.epsilon_plus_flat, params: {canonizers: [SequentialMergeBatchNorm]}}
  - {id: egb, analyzer: zennit.epsilon_gamma_box, params: {low: -3.0, high: 3.0, zero_params: [bias]}}
  - {id: ea2b1f, analyzer: zennit.epsilon_alpha2_beta1_flat}
  - {id: gradient, analyzer: zennit.gradient}
  - {id: captum-eps, analyzer: captum.lrp, params: {epsilon: 1.0e-6}}
  - {id: captum-gamma, analyzer: captum.lrp, params: {rule: gamma}}
  - {id: captum-a1b0, analyzer: captum.lrp, params: {rule: alpha1_beta0}}
  - {id: captum-mixed, analyzer: captum.lrp, params: {rules: {Conv2d: gamma, Linear: epsilon, BatchNorm2d: identity}}}
  - {id: captum-ixg, analyzer: captum.input_x_gradient}
  - {id: captum-ig, analyzer: captum.integrated_gradients, params: {n_steps: 16}, target: output_minus_reference}
  - {id: captum-ig-trapezoid, analyzer: captum.integrated_gradients, params: {n_steps: 16, method: riemann_trapezoid}, target: output_minus_reference}
  - {id: zennit-ig, analyzer: zennit.integrated_gradients, params: {n_iter: 16}, target: output_minus_reference}
"""


@pytest.fixture
def nets(pytester):
    pytester.makepyfile(nets=NETS)
    return pytester


def _run(pytester, model: str, shape: str, *args):
    return pytester.runpytest(f"--lrp-model=nets.py:{model}", f"--lrp-input-shape={shape}", "-p", "no:randomly", *args)


def test_reference_agrees_with_zennit_and_captum_on_every_rule(nets):
    # 20 rules of both libraries on a CNN with biases, BatchNorm, max and adaptive pooling, Flatten, Dropout and a
    # final Softmax: each library's heatmap and relevance at every module equal the formula's (reference_tolerance),
    # and the leak accounting explains conservation's failures by mechanism (nothing left "unexplained").
    nets.makefile(".yaml", rules=RULES)
    result = _run(nets, "cnn", "1,8,8", "-k", "reference", "-rs")
    result.assert_outcomes(passed=20)
    conserved = _run(nets, "cnn", "1,8,8", "-k", "conservation and (eps or gamma or captum-eps)")
    text = conserved.stdout.str()
    assert "leak by mechanism (numpy reference)" in text and "bias" in text
    assert "zennit's change = mechanisms + unexplained" in text and "captum's change" in text


def test_resnet_blocks_under_zennits_three_set_ups(nets):
    # torchvision's BasicBlock: without canonizers zennit hands the whole relevance to both inputs of each
    # residual sum (a plain gradient); with only SequentialMergeBatchNorm the same, on merged weights; with
    # ResNetCanonizer the sum gets zennit's Norm rule. The reference follows each set-up, and the accounting names
    # the mechanism: "gradient" at the sums without ResNetCanonizer, and conservation with it and zero biases.
    nets.makefile(
        ".yaml",
        rules="""
        defaults:
          checks: [conservation, reference]
          tolerance: {rtol: 1.0e-3, atol: 1.0e-6}
        rules:
          - {id: none, analyzer: zennit.epsilon_plus_flat, params: {zero_params: [bias]}}
          - {id: merged, analyzer: zennit.epsilon_plus_flat, params: {zero_params: [bias], canonizers: [SequentialMergeBatchNorm]}}
          - {id: canonized, analyzer: zennit.epsilon_plus_flat, params: {zero_params: [bias], canonizers: auto}}
        """,
    )
    result = _run(nets, "resnet", "3,8,8", "-rxX", "-v")
    text = result.stdout.str()
    # the reference in all three set-ups, conservation with ResNetCanonizer; the other two are zennit's limitation
    result.assert_outcomes(passed=4, xfailed=2)
    for setup in ("none", "merged"):
        line = next(
            line for line in text.splitlines() if line.startswith(f"XFAIL rules.yaml::conservation[resnet-{setup}]")
        )
        assert "the functional operation add in module 'layer1.0'" in line and "plain gradient" in line
    accounted = _run(nets, "resnet", "3,8,8", "-k", "conservation and merged", "-p", "no:cacheprovider", "--runxfail")
    split = accounted.stdout.str()
    assert "leak by mechanism (numpy reference)" in split and "gradient +" in split
    assert "layer1.0 (own operations)" in split


def test_functional_operations_in_a_forward(nets):
    # Concatenations, a functional ReLU (zennit does not hook it: it masks) and a functional average pooling
    # (no Norm rule: its gradient): the reference follows zennit, and the leak is split (dropped at the ReLU,
    # accounted with the model's own operations).
    nets.makefile(".yaml", rules=RULES)
    result = _run(nets, "dense", "2,4,4", "-k", "reference and not captum", "-rs")
    result.assert_outcomes(passed=13)  # every zennit rule; captum refuses the functional operations
    split = _run(nets, "dense", "2,4,4", "-k", "conservation and epf]").stdout.str()
    assert "forward (own operations)" in split and "dropped" in split


def test_depthwise_convolutions_activations_and_squeeze_excitation(nets):
    # zennit passes Hardswish, SiLU and Hardsigmoid modules unchanged and the product of a squeeze-excitation block
    # as a plain gradient: every zennit relevance rule agrees with the reference. The gradient family has no
    # derivative of those activations in the reference: it skips, naming the first one from the output.
    nets.makefile(".yaml", rules=RULES)
    result = _run(nets, "mobile", "2,4,4", "-k", "reference and not captum", "-rs")
    result.assert_outcomes(passed=11, skipped=2)
    skipped = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    assert all("(Hardsigmoid) has no reference: no derivative of it for gradient" in line for line in skipped)
    split = _run(nets, "mobile", "2,4,4", "-k", "conservation and epf]").stdout.str()
    assert "gradient" in split and "forward (own operations)" in split


def test_an_unsupported_module_skips_the_reference_with_one_line(nets):
    nets.makefile(".yaml", rules=RULES)
    result = _run(nets, "gelu_mlp", "1,4,4", "-k", "reference and (eps or epf or gradient)", "-rs")
    result.assert_outcomes(skipped=5)  # eps, epf, epf-merged, gradient; captum-eps refuses the model itself
    lines = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    reference = [line for line in lines if "numpy reference" in line]
    assert len(reference) == 3 and all("layer '2' (GELU) has no reference" in line for line in reference)
    assert any("captum's LRP has no rule for module '2' (GELU)" in line for line in lines)


def test_integrated_gradients_judged_by_their_own_quadrature(nets):
    # 4 Gauss-Legendre points are far from the integral on a CNN with biases: conservation fails, but the sum is
    # the quadrature's own (the reference's, same points and weights), an expected failure; with captum's weights
    # scaled by 1.01 the sum is no longer the quadrature's, which fails, as does the reference check.
    nets.makefile(
        ".yaml",
        rules="""
        defaults:
          checks: [conservation, reference]
          tolerance: {rtol: 1.0e-3, atol: 1.0e-6}
        rules:
          - {id: ig, analyzer: captum.integrated_gradients, params: {n_steps: 4}, target: output_minus_reference}
        """,
    )
    result = _run(nets, "cnn", "1,8,8", "-rxX")
    result.assert_outcomes(passed=1, xfailed=1)
    assert "sums to its formula's own value (numpy reference)" in result.stdout.str()
    nets.makeconftest(
        """
        from captum.attr._utils import approximation_methods as methods
        _builders = methods.gauss_legendre_builders
        def builders():
            step_sizes, alphas = _builders()
            return (lambda n: [1.01 * w for w in step_sizes(n)]), alphas
        methods.gauss_legendre_builders = builders
        def pytest_unconfigure(config):
            methods.gauss_legendre_builders = _builders
        """
    )
    faulty = _run(nets, "cnn", "1,8,8")
    faulty.assert_outcomes(failed=2)


def test_declared_leaks_on_a_model_the_reference_cannot_read(nets):
    # A GELU: the leak cannot be split. With a ceiling the declared leak is an expected failure saying so; an
    # explosion past the ceiling fails; without a ceiling the declaration cannot be checked, which fails.
    nets.makefile(
        ".yaml",
        rules="""
        defaults:
          checks: [conservation]
        rules:
          - {id: ceiling, analyzer: zennit.epsilon_plus, leaks: [bias], max_error: 10}
          - {id: tight, analyzer: zennit.epsilon_plus, leaks: [bias], max_error: 1.0e-6}
          - {id: open, analyzer: zennit.epsilon_plus, leaks: [bias]}
        """,
    )
    result = _run(nets, "gelu_mlp", "1,4,4", "-rxX")
    result.assert_outcomes(xfailed=1, failed=2)
    text = result.stdout.str()
    xfail = next(line for line in text.splitlines() if line.startswith("XFAIL"))
    assert (
        "conservation[gelu_mlp-ceiling]" in xfail
        and "not split by mechanism: layer '2' (GELU) has no reference" in xfail
    )
    assert "beyond the rule's ceiling max_error=1e-06" in text
    assert "leaks: [bias] declared, but this leak cannot be split by mechanism" in text


def test_declared_leaks_on_a_pytorch_model(nets):
    # zennit's Epsilon keeps the biases in its denominators: with `leaks: [bias]` the loss is an expected failure
    # whose reason is the mechanism; the same rule declaring only the stabilizer fails.
    nets.makefile(
        ".yaml",
        rules="""
        defaults:
          checks: [conservation]
        rules:
          - {id: declared, analyzer: zennit.epsilon_plus, leaks: [bias]}
          - {id: wrong, analyzer: zennit.epsilon_plus, leaks: [stabilizer]}
        """,
    )
    result = _run(nets, "cnn", "1,8,8", "-rxX")
    result.assert_outcomes(xfailed=1, failed=1)
    text = result.stdout.str()
    assert "XFAIL" in text and "conservation[cnn-declared]" in text
    assert "FAILED" in text and "conservation[cnn-wrong]" in text


FAULTS = {
    # a changed parameter in one rule: gamma 0.25 read as 0.3 (zero biases: conservation still holds)
    "gamma": (
        """
        import zennit.rules
        _init = zennit.rules.Gamma.__init__
        def init(self, gamma=0.25, **kwargs):
            _init(self, gamma=gamma * 1.2, **kwargs)
        zennit.rules.Gamma.__init__ = init
        def restore():
            zennit.rules.Gamma.__init__ = _init
        """,
        "{id: fault, analyzer: zennit.rule.gamma, params: {gamma: 0.25, zero_params: [bias]}}",
    ),
    # a transposed kernel: Epsilon's copy of a convolution's weight with its spatial axes swapped
    "transposed": (
        """
        import zennit.rules
        _init = zennit.rules.NoMod.__init__
        def init(self, **kwargs):
            _init(self, **kwargs)
            self.modifier = lambda param, name: param.transpose(-1, -2) if param.ndim == 4 else param
        zennit.rules.NoMod.__init__ = init
        def restore():
            zennit.rules.NoMod.__init__ = _init
        """,
        "{id: fault, analyzer: zennit.rule.epsilon, params: {epsilon: 1.0e-6, zero_params: [bias]}}",
    ),
    # a wrong stabiliser sign: d - eps sign(d) instead of d + eps sign(d)
    "stabilizer": (
        """
        import zennit.core
        _call = zennit.core.Stabilizer.__call__
        def call(self, input):
            return 2 * input - _call(self, input)
        zennit.core.Stabilizer.__call__ = call
        def restore():
            zennit.core.Stabilizer.__call__ = _call
        """,
        "{id: fault, analyzer: zennit.rule.epsilon, params: {epsilon: 0.1}}",
    ),
    # captum's Alpha1_Beta0_Rule keeping the negative weights
    "captum": (
        """
        from captum.attr._utils import lrp_rules
        _manipulate = lrp_rules.Alpha1_Beta0_Rule._manipulate_weights
        lrp_rules.Alpha1_Beta0_Rule._manipulate_weights = lambda self, module, inputs, outputs: None
        def restore():
            lrp_rules.Alpha1_Beta0_Rule._manipulate_weights = _manipulate
        """,
        "{id: fault, analyzer: captum.lrp, params: {rule: alpha1_beta0}}",
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_an_injected_fault_fails_the_reference_check(nets, fault):
    patch, rule = FAULTS[fault]
    nets.makefile(".yaml", rules=f"defaults:\n  checks: [conservation, reference]\nrules:\n  - {rule}\n")
    clean = _run(nets, "cnn_without_bias", "1,8,8", "-k", "reference")
    clean.assert_outcomes(passed=1)
    # pytester runs in this process: the conftest undoes its patch when its session ends
    nets.makeconftest(textwrap.dedent(patch) + "\n\ndef pytest_unconfigure(config):\n    restore()\n")
    faulty = _run(nets, "cnn_without_bias", "1,8,8")
    outcomes = faulty.parseoutcomes()
    text = faulty.stdout.str()
    assert "reference[cnn_without_bias-fault]" in text.split("short test summary info")[-1], text
    assert "differs from the numpy reference" in text
    if fault in ("gamma", "transposed"):  # the fault keeps conservation: only the reference sees it
        assert outcomes.get("passed", 0) == 1 and outcomes.get("failed", 0) == 1, text


def test_the_references_zennit_rules_against_an_independent_computation():
    # On a bias-free ReLU network, zennit's Epsilon with a tiny epsilon is LRP-0, which equals input x gradient
    # (the network is positively homogeneous: x . grad f_k(x) = f_k(x), the relevance LRP starts from);
    # the reference computes the one through libraries.py (terms, stabiliser, Pass) and the other through its
    # gradient family: two code paths, one number. With biases, Epsilon's heatmap sums to the output minus what the
    # biases took, which the accounting's bias mechanism must equal exactly.
    from pytest_lrp.pytorch.graph import channels_last, reference_model
    from pytest_lrp.reference import explain

    torch.manual_seed(7)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1, bias=False),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3, bias=False),
    ).eval()
    model = reference_model(net, (2, 4, 4))
    x = channels_last(np.random.default_rng(0).normal(size=(3, 2, 4, 4)))
    lrp0 = explain(model, x, "zennit.rule.epsilon", {"epsilon": 1e-12}, "index", [0, 1, 2])
    ixg = explain(model, x, "input_t_gradient", {}, "index", [0, 1, 2])
    np.testing.assert_allclose(lrp0.heatmap, ixg.heatmap, rtol=1e-6, atol=1e-9)

    with torch.no_grad():
        for layer in (net[0], net[3]):
            layer.bias = torch.nn.Parameter(torch.randn(layer.weight.shape[0]) * 0.5)
    model = reference_model(net, (2, 4, 4))
    result = explain(model, x, "zennit.rule.epsilon", {"epsilon": 1e-9}, "index", [0, 1, 2])
    lost = result.heatmap.reshape(3, -1).sum(axis=1) - model.predict(x)[np.arange(3), [0, 1, 2]]
    bias = sum(account.mechanisms["bias"] + account.mechanisms["stabilizer"] for account in result.layers)
    np.testing.assert_allclose(lost, bias, rtol=1e-9, atol=1e-12)
    assert np.abs(lost).max() > 1e-3  # the biases did take relevance
