"""zennit's and captum's LRP rules, as those libraries define them, for the reference's backward pass.

The model is read by the PyTorch backend (pytest_lrp/pytorch/graph.py) into the reference's layers,
channels-last, with each layer's torch class and its place in ``named_modules()`` in its config (``torch_class``,
``order``), and the model as zennit's canonizers leave it: BatchNorm merged into the layer before it, and the
additions of torchvision's residual blocks marked ``canonized`` (zennit's Sum module) where a ResNet canonizer
is used.

zennit 1.0 (rules.py, composites.py, core.py):
- Every rule's denominator is stabilised as d + stabilizer * sign(d), sign(0) = +1 (1e-6 by default).
- Epsilon: z = x w + b. ZPlus and AlphaBeta: inputs split into x+ and x-; the activator is x+ w+ + x- w- with
  b+, the inhibitor x+ w- + x- w+ with b- (each modified copy of the layer keeps the bias part of its weights'
  sign, the other copy none). Gamma: where the layer's output is positive, x+ (w + g w+) + x- (w + g w-) with
  b + g b+; where negative, x+ (w + g w-) + x- (w + g w+) with b + g b-; where zero, nothing.
  WSquare: w^2 over a forward pass of ones, with b^2 in the denominator; Flat: ones, no bias.
  ZBox: x w - low w+ - high w-, the bias cancelling. ``zero_params: bias`` drops the bias of every rule.
- Composites: convolutions get ZPlus (epsilon_plus), AlphaBeta(2, 1) (epsilon_alpha2_beta1) or Gamma
  (epsilon_gamma_box), linear layers Epsilon; the ``_flat`` composites give Flat to the first convolution or
  linear layer in module order, epsilon_gamma_box ZBox to the first convolution. Every composite's base map:
  activations and BatchNorm pass relevance unchanged (Pass), average pooling modules and canonized sums get
  Norm (z over the inputs, stabilised). Anything else without a rule passes the gradient: an addition hands
  its whole relevance to each input, max pooling routes it to the maximum, a functional ReLU masks it, a
  functional average pooling spreads it evenly (marked ``functional`` by the reader).
captum 0.9 (attr/_utils/lrp_rules.py, attr/_core/lrp.py):
- Every rule: z over the layer's forward pass with its modified weights and the whole bias, d + eps sign(d),
  sign(0) = +1; EpsilonRule with its epsilon (1e-9 by default), the others with 1e-9. GammaRule: w + g w+;
  Alpha1_Beta0_Rule: w+ (on x as it is, not split); IdentityRule: relevance passes unchanged.
- BatchNorm2d takes the rule on its scale (weight / sqrt(var + eps)), with beta - mean * scale as the bias;
  max and average pooling take it too (max pooling: the maximum's share y / stab(y) of the relevance).
- ReLU and Dropout modules pass relevance unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .model import AVG_POOL, GLOBAL_AVG, MAX_POOL, Layer, ReferenceModel
from .ops import Scale
from .rules import Rule, UnsupportedRule, apply_terms, stabilize

ZENNIT_STABILIZER = 1e-6
CAPTUM_STABILITY = 1e-9
ZENNIT_COMPOSITES = (
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon_gamma_box",
)
ZENNIT_RULES = ("epsilon", "zplus", "alpha_beta", "gamma", "wsquare", "flat", "zbox")
LIBRARY_ANALYZERS = (
    *(f"zennit.{name}" for name in ZENNIT_COMPOSITES),
    *(f"zennit.rule.{name}" for name in ZENNIT_RULES),
    "captum.lrp",
)
CONVOLUTIONS = ("Conv1D", "Conv2D", "DepthwiseConv2D")


def _zero_bias(params: dict) -> bool:
    zero = params.get("zero_params") or []
    return "bias" in ([zero] if isinstance(zero, str) else list(zero))


class ZennitPolicy:
    family = "zennit"

    def __init__(self, model: ReferenceModel, analyzer: str, params: dict):
        self.model, self.analyzer = model, analyzer
        name = analyzer[len("zennit.") :]
        self.stabilizer = float(params.get("stabilizer", ZENNIT_STABILIZER))
        self.first: Rule | None = None
        self.first_types: tuple = ()
        rule = functools.partial(self._one_rule, params=params, bias=not _zero_bias(params))
        if name.startswith("rule."):
            self.conv = self.dense = rule(name[len("rule.") :])
            return
        # the composites: Epsilon on linear layers, their rule on convolutions (AlphaBeta's defaults are 2, 1)
        self.dense = rule("epsilon")
        if name == "epsilon_gamma_box":
            self.conv, self.first, self.first_types = rule("gamma"), rule("zbox"), CONVOLUTIONS
        else:
            self.conv = rule("zplus" if name.startswith("epsilon_plus") else "alpha_beta")
        if name.endswith("_flat"):
            self.first, self.first_types = rule("flat"), (*CONVOLUTIONS, "Dense")

    def _one_rule(self, name: str, params: dict, bias: bool) -> Rule:
        stab = self.stabilizer
        if name == "epsilon":
            return Rule("epsilon", epsilon=float(params.get("epsilon", ZENNIT_STABILIZER)), bias=bias)
        if name == "zplus":
            return Rule("alpha_beta", alpha=1.0, beta=0.0, bias=bias, bias_part="split", stabilizer=stab)
        if name == "alpha_beta":
            alpha, beta = float(params.get("alpha", 2.0)), float(params.get("beta", 1.0))
            return Rule("alpha_beta", alpha=alpha, beta=beta, bias=bias, bias_part="split", stabilizer=stab)
        if name == "gamma":
            return Rule("gamma", gamma=float(params.get("gamma", 0.25)), bias=bias, stabilizer=stab)
        if name == "wsquare":
            return Rule("w_square", bias=bias, bias_part="square", stabilizer=stab)
        if name == "flat":
            return Rule("flat", stabilizer=stab)
        if name == "zbox":
            if params.get("low") is None or params.get("high") is None:
                raise UnsupportedRule("zennit's ZBox needs low and high")
            return Rule("bounded", low=float(params["low"]), high=float(params["high"]), stabilizer=stab)
        raise UnsupportedRule(f"zennit rule {name!r} has no reference")

    def kernel_rule(self, layer: Layer) -> Rule | None:
        if self.first is not None and layer.class_name in self.first_types and layer is self._first_layer():
            return self.first
        return self.conv if layer.class_name in CONVOLUTIONS else self.dense

    def _first_layer(self) -> Layer | None:
        """zennit's first layer: the first module of the first map's types in ``named_modules()`` order."""
        candidates = [layer for layer in self.model.layers if layer.class_name in self.first_types]
        return min(candidates, key=lambda layer: layer.config.get("order", 0), default=None)

    def layer(self, walk: Any, layer: Layer, xs: list, r: np.ndarray, seen, bound, split, total):
        cls = layer.class_name
        if cls in ("Activation", "TorchActivation", "BatchNormalization"):
            return ("pass", [r], *split())
        if cls == "Add":
            if layer.config.get("canonized"):
                return walk.z_sum(xs, r, split, ("epsilon", self.stabilizer), "norm")
            return ("gradient", [r.copy() for _ in xs], *split("gradient", lambda rr: (len(xs) - 1) * total(rr)))
        if (cls in AVG_POOL or cls in GLOBAL_AVG) and not layer.config.get("functional"):
            return walk.pooled_z(layer, xs[0], r, seen, bound, ("epsilon", self.stabilizer), "norm")
        return None  # a pooling written as a function in a forward has no rule: its gradient (shared code)


class CaptumPolicy:
    family = "captum"

    def __init__(self, model: ReferenceModel, analyzer: str, params: dict):
        self.model, self.analyzer = model, analyzer
        self.default = params.get("rule", "epsilon")
        self.by_class = dict(params.get("rules") or {})
        self.epsilon = float(params.get("epsilon", CAPTUM_STABILITY))
        self.gamma = float(params.get("gamma", 0.25))

    def _name(self, layer: Layer) -> str:
        return self.by_class.get(layer.config.get("torch_class", ""), self.default)

    def _stabilizer(self, name: str) -> float:
        return self.epsilon if name == "epsilon" else CAPTUM_STABILITY

    def kernel_rule(self, layer: Layer) -> Rule | None:
        name = self._name(layer)
        if name == "epsilon":
            return Rule("epsilon", epsilon=self.epsilon)
        if name == "gamma":
            return Rule("gamma_plain", gamma=self.gamma, stabilizer=CAPTUM_STABILITY)
        if name == "alpha1_beta0":
            return Rule("positive_weights", stabilizer=CAPTUM_STABILITY)
        raise UnsupportedRule(f"captum's {name} rule on layer {layer.name!r} has no reference")

    def layer(self, walk: Any, layer: Layer, xs: list, r: np.ndarray, seen, bound, split, total):
        cls = layer.class_name
        if cls == "Activation":
            return ("pass", [r], *split())
        if cls not in ("BatchNormalization", *MAX_POOL, *AVG_POOL, *GLOBAL_AVG):
            return None
        x = xs[0]
        name = self._name(layer)
        if name == "identity":
            return ("pass", [r], *split()) if cls == "BatchNormalization" else None
        stabilizer = ("epsilon", self._stabilizer(name))
        if cls in MAX_POOL:
            y = walk.acts[layer.name]
            share = y / stabilize(y, stabilizer)
            routed = layer.op.transpose(r * share, walk.acts[layer.name + ":argmax"], x.shape)
            return ("z", [routed], *split("stabilizer", lambda rr: total(rr * share - rr)))
        if cls != "BatchNormalization":
            return walk.pooled_z(layer, x, r, seen, bound, stabilizer, "z")
        gamma_, beta, mean, variance, eps, axis = layer.bn
        weight = {"epsilon": gamma_, "gamma": gamma_ + self.gamma * np.maximum(gamma_, 0)}.get(
            name, np.maximum(gamma_, 0)
        )
        k = weight / np.sqrt(variance + eps)
        b = beta - mean * k
        scale = Scale(axis, x.ndim)
        r_in, mech, seen_mech, walk._rounding = apply_terms(
            scale,
            [(1.0, [(x, k, 1.0)], scale._b(b), stabilizer)],
            r,
            x.shape,
            observed=seen,
            bound=bound,
            forward=walk.forward_count,
        )
        return f"{name} (BatchNorm)", [r_in], mech, seen_mech


def library_policy(model: ReferenceModel, analyzer: str, params: dict):
    if analyzer.startswith("zennit."):
        return ZennitPolicy(model, analyzer, params)
    return CaptumPolicy(model, analyzer, params)


__all__ = ["LIBRARY_ANALYZERS", "CaptumPolicy", "ZennitPolicy", "library_policy"]
