"""explain(): which rule each layer gets, the backward pass, and the per-layer accounting.

Conventions of innvestigate 2.1.2 followed here (from its analyzer code; see also rules.py):
- Head: max_activation puts the largest output value at its neuron (ties share it equally,
  the gradient of reduce_max); index puts out[i, k]; all puts every output. Outputs with
  more than two axes are flattened first. Deep Taylor explains relu(output) (its model gets
  a ReLU on top).
- LRP analyzers: layers with a kernel (Dense, Conv1D/2D, DepthwiseConv2D) get the rule;
  their activation is ignored (relevance at the output is relevance at the pre-activation).
  BatchNormalization is fused into y = k x + b and gets the analyzer's BN rule (the same
  rule as the kernels; alpha_beta_x(2,0;1,0) for the sequential presets).
  Add and (global) average pooling get the z rule over their sum. An Activation layer passes
  relevance unchanged; every other layer passes it along its gradient: a ReLU *layer*
  masks it (relevance at x <= 0 is dropped), max pooling sends it to the first maximum of the
  window, global max pooling splits it over tied maxima, ZeroPadding drops what lands on
  the padding, Flatten/Reshape/Dropout/Concatenate move it.
- Rule choice: input_layer_rule goes to the kernel layers fed directly by the input (looking
  through Flatten/Reshape), until_layer_idx to model.layers[0..idx] (Keras' list: a Sequential
  model's list leaves the InputLayer out), then the analyzer's rule; the presets use epsilon
  (bias, eps 0.1 by default) on Dense and alpha-beta (1,0 / 2,1 with bias) on convolutions.
- Deep Taylor: every kernel layer (all have an activation attribute, even 'linear') gets
  alpha=1, beta=0 without bias (z+); bounded Deep Taylor gives the input kernel layers
  z^B(low, high). Every other layer, BatchNormalization and Add included, passes the
  gradient: an Add hands the full relevance to each of its inputs and a BatchNormalization
  multiplies it by gamma / sqrt(var + eps); the accounting calls that change `gradient`.
- Gradient family: plain gradients of the selected output (ones at the head);
  integrated_gradients averages them over `steps` points ref + t (x - ref) with
  t = k / steps, k = 0 .. steps-1 (a left Riemann sum: t = 1 is never used), all for the
  neuron that is largest at x itself, and multiplies by x - ref. `method` picks another
  approximation (zennit's right Riemann sum, captum's Gauss-Legendre and Riemann sums).

Where innvestigate differs from the papers (Bach 2015, Montavon 2017/2019): the bias enters
both alpha-beta denominators; alpha-beta without a negative (positive) part multiplies the
relevance by alpha (-beta); z+ drops the relevance of neurons with no positive input;
BatchNormalization's fused form uses sqrt(variance**2 + eps) and leaves gamma out of the
bias (an innvestigate 2.1.2 bug; `bn_fusion="innvestigate"` reproduces it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .libraries import LIBRARY_ANALYZERS, library_policy
from .model import (
    AVG_POOL,
    GLOBAL_AVG,
    GLOBAL_MAX,
    IDENTITY,
    KERNEL,
    MAX_POOL,
    PADDING,
    Layer,
    ReferenceModel,
    UnsupportedLayer,
    bn_affine,
    flattens_channels_first,
    padding_of,
)
from .ops import Scale
from .rules import (
    BIAS_MAGNITUDE,
    FLOAT32_UNIT,
    KERAS_EPSILON,
    MECHANISMS,
    ROUNDING_SIGMAS,
    Rounding,
    Rule,
    UnsupportedRule,
    _absolute_pieces,
    _squared,
    apply_terms,
    float32_bound,
    stabilize,
    terms,
    zero_mechanisms,
)


@dataclass
class LayerAccount:
    name: str
    class_name: str
    rule: str
    relevance_out: np.ndarray
    relevance_in: np.ndarray
    mechanisms: dict
    maps: dict | None = None
    # the same mechanisms applied to the relevance another implementation had at this layer's
    # output (explain's ``observed``); None where it had none
    observed_mechanisms: dict | None = None
    # how far float32 arithmetic may have moved the relevance at this layer's output (per element),
    # and this layer's own share of the rounding of the total (per sample); None unless bounds were asked for
    bound_out: np.ndarray | None = None
    rounding: np.ndarray | None = None


@dataclass
class ReferenceResult:
    heatmap: np.ndarray
    output_relevance: np.ndarray
    layers: list = field(default_factory=list)
    selected: np.ndarray | None = None  # the explained output neuron per sample
    heatmap_bound: np.ndarray | None = None  # float32 rounding bound per heatmap element (explain's bounds=True)
    head_rounding: np.ndarray | float = 0.0  # per sample: the rounding of the output innvestigate starts from

    def rounding_total(self) -> np.ndarray:
        """Per sample: the most float32 rounding may move sum(R) from the formula's exact value (the
        layers' own shares, worst case; and the output innvestigate starts from)."""
        return self.head_rounding + sum(
            (a.rounding for a in self.layers if a.rounding is not None), np.zeros(len(self.heatmap))
        )

    def layer(self, name: str) -> LayerAccount:
        return next(account for account in self.layers if account.name == name)


LRP_NAMES = {
    "lrp.z",
    "lrp.epsilon",
    "lrp.w_square",
    "lrp.flat",
    "lrp.alpha_beta",
    "lrp.alpha_2_beta_1",
    "lrp.alpha_2_beta_1_IB",
    "lrp.alpha_1_beta_0",
    "lrp.alpha_1_beta_0_IB",
    "lrp.z_plus",
    "lrp.z_plus_fast",
    "lrp.sequential_preset_a",
    "lrp.sequential_preset_b",
    "lrp.sequential_preset_a_flat",
    "lrp.sequential_preset_b_flat",
    "lrp.sequential_preset_b_flat_until_idx",
}
DEEP_TAYLOR = {"deep_taylor", "deep_taylor.bounded"}
GRADIENTS = {"gradient", "gradient.baseline", "input_t_gradient", "integrated_gradients", "input"}
ANALYZERS = sorted(LRP_NAMES | DEEP_TAYLOR | GRADIENTS | set(LIBRARY_ANALYZERS))
LIBRARY_FAMILIES = ("zennit", "captum")
NAMED_RULES = {
    "Z": Rule("z"),
    "Epsilon": Rule("epsilon"),
    "WSquare": Rule("w_square"),
    "Flat": Rule("flat"),
    "Alpha2Beta1": Rule("alpha_beta", alpha=2, beta=1),
    "Alpha2Beta1IgnoreBias": Rule("alpha_beta", alpha=2, beta=1, bias=False),
    "Alpha1Beta0": Rule("alpha_beta", alpha=1, beta=0),
    "Alpha1Beta0IgnoreBias": Rule("alpha_beta", alpha=1, beta=0, bias=False),
    "ZPlus": Rule("alpha_beta", alpha=1, beta=0, bias=False),
    "ZPlusFast": Rule("z_plus_fast"),
    "Bounded": Rule("bounded", low=-1, high=1),
}
PRESET_BN = Rule("alpha_beta_x", x_weights=(2, 0, 1, 0))


def _alpha_beta(params) -> tuple[float, float]:
    alpha, beta = params.get("alpha"), params.get("beta")
    if alpha is None and beta is None:
        raise UnsupportedRule("lrp.alpha_beta needs alpha or beta")
    alpha = beta + 1 if alpha is None else alpha
    beta = alpha - 1 if beta is None else beta
    return float(alpha), float(beta)


def _named_rule(value) -> Rule:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return Rule("bounded", low=float(value[0]), high=float(value[1]))
    if isinstance(value, str) and value in NAMED_RULES:
        return NAMED_RULES[value]
    raise UnsupportedRule(f"input_layer_rule/until_layer_rule {value!r} has no reference")


class Policy:
    """Which rule a layer with weights (and a BatchNormalization) gets, for one analyzer."""

    def __init__(self, model: ReferenceModel, analyzer: str, params: dict):
        self.model, self.analyzer, self.params = model, analyzer, params
        self.family = "lrp" if analyzer in LRP_NAMES else "deep_taylor" if analyzer in DEEP_TAYLOR else "gradient"
        p = params
        base = {
            "lrp.z": Rule("z"),
            "lrp.epsilon": Rule(
                "epsilon", epsilon=float(p.get("epsilon", KERAS_EPSILON)), bias=bool(p.get("bias", True))
            ),
            "lrp.w_square": Rule("w_square"),
            "lrp.flat": Rule("flat"),
            "lrp.alpha_2_beta_1": NAMED_RULES["Alpha2Beta1"],
            "lrp.alpha_2_beta_1_IB": NAMED_RULES["Alpha2Beta1IgnoreBias"],
            "lrp.alpha_1_beta_0": NAMED_RULES["Alpha1Beta0"],
            "lrp.alpha_1_beta_0_IB": NAMED_RULES["Alpha1Beta0IgnoreBias"],
            "lrp.z_plus": NAMED_RULES["ZPlus"],
            "lrp.z_plus_fast": Rule("z_plus_fast"),
        }
        if analyzer == "lrp.alpha_beta":
            alpha, beta = _alpha_beta(p)
            base[analyzer] = Rule("alpha_beta", alpha=alpha, beta=beta, bias=bool(p.get("bias", True)))
        self.rule = base.get(analyzer)
        self.bn_rule = self.rule
        self.preset = None
        if analyzer.startswith("lrp.sequential_preset"):
            eps = float(p.get("epsilon", 0.1))
            conv = NAMED_RULES["Alpha1Beta0"] if "preset_a" in analyzer else NAMED_RULES["Alpha2Beta1"]
            self.preset = (Rule("epsilon", epsilon=eps), conv)
            self.bn_rule = PRESET_BN
        input_rule = p.get("input_layer_rule")
        if analyzer.endswith("_flat") or analyzer.endswith("_flat_until_idx"):
            input_rule = "Flat"
        self.input_rule = _named_rule(input_rule) if input_rule is not None else None
        self.until = {}
        idx = p.get("until_layer_idx")
        until_rule = p.get("until_layer_rule", "Flat" if analyzer.endswith("until_idx") else None)
        if idx is not None and until_rule is not None:
            names = [layer.name for layer in model.keras_layers()[: int(idx) + 1]]
            self.until = {name: _named_rule(until_rule) for name in names}
        if analyzer == "deep_taylor.bounded":
            if p.get("low") is None or p.get("high") is None:
                raise UnsupportedRule("deep_taylor.bounded needs low and high")
            self.bounded = Rule("bounded", low=float(p["low"]), high=float(p["high"]))

    def kernel_rule(self, layer: Layer) -> Rule | None:
        if self.family == "deep_taylor":
            if self.analyzer == "deep_taylor.bounded" and self.model.is_input_layer(layer):
                return self.bounded
            return NAMED_RULES["ZPlus"]
        if self.input_rule is not None and self.model.is_input_layer(layer):
            return self.input_rule
        if layer.name in self.until:
            return self.until[layer.name]
        if self.preset is not None:
            return self.preset[0] if layer.class_name == "Dense" else self.preset[1]
        return self.rule


def _select(out: np.ndarray, mode: str, index, values: bool) -> tuple[np.ndarray, np.ndarray]:
    """The head: (relevance at the flattened output, index of the explained neuron)."""
    n = len(out)
    if mode == "max_activation":
        best = out.max(axis=1, keepdims=True)
        ties = out == best
        share = ties / ties.sum(axis=1, keepdims=True)
        return (share * best if values else share), out.argmax(axis=1)
    if mode == "index":
        if index is None:
            raise UnsupportedRule("neuron_selection 'index' needs an index")
        idx = np.broadcast_to(np.asarray(index, dtype=int).ravel(), (n,)) if np.ndim(index) else np.full(n, int(index))
        head = np.zeros_like(out)
        rows = np.arange(n)
        head[rows, idx] = out[rows, idx] if values else 1.0
        return head, idx
    if mode == "all":
        return (out.copy() if values else np.ones_like(out)), np.full(n, -1)
    raise UnsupportedRule(f"neuron_selection {mode!r}")


# Keywords that change nothing the reference computes (innvestigate's plumbing).
PLUMBING = {"disable_model_checks", "neuron_selection_mode", "allow_lambda_layers"}
MODELLED = {
    "epsilon",
    "bias",
    "alpha",
    "beta",
    "low",
    "high",
    "steps",
    "method",
    "reference_inputs",
    "input_layer_rule",
    "until_layer_idx",
    "until_layer_rule",
}


def _check_params(analyzer: str, params: dict) -> None:
    """A keyword the reference does not model would make its answer silently wrong: refuse it."""
    for key, value in params.items():
        if key in PLUMBING or key.startswith("reverse_") or key in MODELLED:
            continue
        if key == "bn_layer_fuse_mode" and value == "one_linear":
            continue
        if key == "postprocess" and value is None:
            continue
        raise UnsupportedRule(f"{analyzer} with {key}={value!r} has no reference")


def explain(
    model: ReferenceModel,
    x,
    analyzer: str,
    params: dict | None = None,
    neuron_selection: str = "max_activation",
    index=None,
    *,
    keep_maps: bool = True,
    bn_fusion: str = "exact",
    dtype=np.float64,
    observed: dict | None = None,
    bounds: bool = False,
    positive_head: bool = False,
) -> ReferenceResult:
    """The rule's relevance for ``x``, computed from its formula in numpy, layer by layer.

    Parameters
    ----------
    model : ReferenceModel
        The network, read from a Keras config and its weights (``ReferenceModel.from_keras``).
    x : array_like
        The inputs, a batch in the model's input shape.
    analyzer : str
        An innvestigate analyzer name the reference implements (``ANALYZERS``), e.g. ``"lrp.z"``.
    params : dict, optional
        The analyzer's keyword arguments as innvestigate takes them (``epsilon``, ``alpha``, ``low``,
        ``steps``, ...); one the reference does not model raises UnsupportedRule.
    neuron_selection : {"max_activation", "index", "all"}
        Which output is explained, as innvestigate's ``neuron_selection_mode``.
    index : int or array_like, optional
        With ``"index"``: the explained output neuron, one for all samples or one per sample.
    keep_maps : bool
        Keep each layer's relevance maps (``LayerAccount.maps``), which the ``reference`` check compares.
    bn_fusion : {"exact", "innvestigate"}
        How BatchNormalization is fused: its own formula, or as innvestigate 2.1.2 does it (its bug;
        engine/known_bugs.py).
    dtype : numpy dtype
        The precision to compute in; float32 reproduces float32 arithmetic for tests.
    observed : dict, optional
        {layer name: relevance at that layer's output} of another implementation (innvestigate's kept
        tensors); each such layer's account also gets ``observed_mechanisms``, the formula's mechanisms
        applied to that relevance (the split of what that implementation did at this layer, independent
        of where its relevance and the reference's parted further up).
    positive_head : bool
        Start from the positive part of the explained output (a rule's ``target: positive_output``).
    bounds : bool
        Also bound how far float32 arithmetic (innvestigate's) may move the relevance from this float64
        result: per element at every layer (``LayerAccount.bound_out``, ``ReferenceResult.heatmap_bound``)
        and per sample in total (``ReferenceResult.rounding_total``); see rules.float32_bound.

    Returns
    -------
    ReferenceResult
        The heatmap, the explained outputs' relevance, the selected neurons and one LayerAccount per
        layer, output first, with its mechanisms of leaking relevance.
    """
    params = dict(params or {})
    if np.dtype(dtype) != np.float64:
        model = model.astype(dtype)
    if analyzer not in ANALYZERS:
        raise UnsupportedRule(f"analyzer {analyzer!r} has no reference")
    if analyzer not in LIBRARY_ANALYZERS:  # zennit's and captum's parameters are checked where they are read
        _check_params(analyzer, params)
    x = np.asarray(x, dtype=dtype)
    if analyzer == "input":
        return ReferenceResult(x.copy(), np.zeros(len(x)), [])
    if analyzer == "integrated_gradients":
        return _integrated_gradients(model, x, params, neuron_selection, index, bounds)
    policy: Any = (
        library_policy(model, analyzer, params) if analyzer in LIBRARY_ANALYZERS else Policy(model, analyzer, params)
    )
    acts = model.forward(x)
    out = acts[model.output_name]
    shape = out.shape
    flat = out.reshape(len(out), -1)
    if policy.family == "deep_taylor" or positive_head:
        flat = np.maximum(flat, 0.0)
    head, selected = _select(flat, neuron_selection, index, values=policy.family != "gradient")
    accounts: list = []
    walk = _Backward(model, acts, policy, keep_maps, bn_fusion, observed, bounds)
    heatmap = walk.run(head.reshape(shape), accounts)
    if analyzer == "input_t_gradient":
        heatmap = heatmap * x
        if bounds:
            walk.heatmap_bound = walk.heatmap_bound * np.abs(x)
    result = ReferenceResult(heatmap, head.reshape(len(x), -1).sum(axis=1), accounts, selected)
    result.heatmap_bound = walk.heatmap_bound
    if bounds:
        result.head_rounding = np.abs(head).reshape(len(x), -1).sum(axis=1) * walk.forward_unit
    return result


def _integrated_gradients(model, x, params, neuron_selection, index, bounds: bool = False) -> ReferenceResult:
    steps = int(params.get("steps", 64))
    reference = np.broadcast_to(np.asarray(params.get("reference_inputs", 0.0), dtype=x.dtype), x.shape)
    difference = x - reference
    out = model.predict(x)
    if neuron_selection == "max_activation":
        # innvestigate's path wrapper fixes the neuron of the unperturbed input for every step
        neuron_selection, index = "index", out.argmax(axis=1)
    if neuron_selection == "index":
        index = np.broadcast_to(np.asarray(index, dtype=int).ravel(), (len(x),))
    # left Riemann sum (t = 0 .. (steps-1)/steps); path points of all samples go through the network
    # together (batching spares re-reading the Dense kernels per point), in chunks whose activations stay
    # within IG_CHUNK_BYTES: the first chunk is one point, which measures them
    ts, weights = _path(model, reference, steps, str(params.get("method", "riemann_left")))
    sample = np.repeat(np.arange(len(x)), len(ts))
    position = np.tile(ts, len(x)).reshape((-1,) + (1,) * (x.ndim - 1))
    weight = np.tile(weights, len(x)).reshape(position.shape)
    total = np.zeros_like(x)
    total_bound = np.zeros_like(x)
    known: dict = {}
    start, per_chunk = 0, 1
    while start < len(sample):
        rows, t = sample[start : start + per_chunk], position[start : start + per_chunk]
        points = reference[rows] + t * difference[rows]
        chosen = None if index is None else index[rows]
        gradients, point_bytes, gradient_bounds = _path_gradients(
            model, points, neuron_selection, chosen, known, bounds
        )
        np.add.at(total, rows, weight[start : start + per_chunk] * gradients)
        if bounds:
            np.add.at(total_bound, rows, weight[start : start + per_chunk] * gradient_bounds)
        start += len(rows)
        per_chunk = max(1, IG_CHUNK_BYTES // max(1, point_bytes))
    # what completeness promises: f(x) - f(reference) at the explained neuron
    rows = np.arange(len(x))
    base = model.predict(np.ascontiguousarray(reference), cache=False)
    chosen = out.argmax(axis=1) if index is None else index
    target = (out - base)[rows, chosen] if neuron_selection != "all" else (out - base).sum(axis=1)
    result = ReferenceResult(total * difference, target, [], None if index is None else np.asarray(index))
    if bounds:
        result.heatmap_bound = total_bound * np.abs(difference)
        result.head_rounding = np.zeros(len(x))
    return result


# The forward activations of one chunk of path points; the chunk's peak is about three times that (the
# backward pass's temporaries): all path points of all samples at once would hold every activation of
# samples x steps inputs.
IG_CHUNK_BYTES = 64 * 2**20


QUADRATURES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def _quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points t in [0, 1] and weights of an integral's approximation: innvestigate's left Riemann sum, zennit's
    right one (t = 1/n .. 1), and captum's methods (attr/_utils/approximation_methods.py: Gauss-Legendre by
    default, its trapezoid halves the end points' weights)."""
    if method == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1.0 + points), 0.5 * weights
    weights = np.full(steps, 1.0 / steps)
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return np.linspace(0.0, 1.0, steps), weights
    offsets = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}
    if method not in offsets:
        raise UnsupportedRule(f"integrated gradients' method {method!r} has no reference")
    return (np.arange(steps) + offsets[method]) / steps, weights


def _path(model, reference: np.ndarray, steps: int, method: str = "riemann_left") -> tuple[np.ndarray, np.ndarray]:
    """The path points t of the approximation and their weights (summing to 1, or a little less).

    From a zero reference through a positively homogeneous network (no biases, no BatchNormalization)
    the point t x has the activation pattern of x for every t > 0 (each pre-activation is t times x's,
    so its sign is x's; each max-pooling window keeps its maximum; in floating point up to units within
    rounding of zero, which innvestigate's float32 points may flip as well), hence x's gradient:
    the sum needs t = 0 and t = 1 only, one forward and backward pass each instead of `steps`.
    Any other network walks every point, reusing the gradient of a pattern already seen (_path_gradients)."""
    ts, weights = _quadrature(method, steps)
    if steps > 1 and not np.any(reference) and model.positively_homogeneous():
        zero = ts == 0
        return np.append(ts[zero], 1.0), np.append(weights[zero], weights[~zero].sum())
    return ts, weights


def _path_gradients(model, points, neuron_selection, index, known: dict, bounds: bool = False) -> tuple:
    """The plain gradient at points of a path, from a forward pass that keeps only what the gradient needs,
    and the bytes of that pass's activations per point.

    The gradient of a network of ReLUs, max pooling and linear maps is a function of its activation
    pattern alone (which units are on, which cell is each window's maximum) and of the explained
    neuron: points with a pattern already seen (``known``: pattern -> gradient) get that gradient
    without a backward pass. A trained network with biases changes its pattern along the path and gains
    little; a network without them does not need the points between 0 and x at all (_path)."""
    acts = model.forward(points, products=False, cache=False)
    out = acts[model.output_name]
    head, _ = _select(out.reshape(len(out), -1), neuron_selection, index, values=False)
    head = head.reshape(out.shape)
    keys = _patterns(model, acts, index)
    todo = sorted({keys.index(key) for key in keys if key not in known})
    if todo:
        subset = acts if len(todo) == len(keys) else {name: value[todo] for name, value in acts.items()}
        walk = _Backward(model, subset, Policy(model, "gradient", {}), False, "exact", bounds=bounds)
        grads = walk.run(head[todo], [])
        grad_bounds: Any = walk.heatmap_bound if bounds else [None] * len(grads)
        for i, grad, grad_bound in zip(todo, grads, grad_bounds):
            known[keys[i]] = (grad, grad_bound)
    gradient_bounds = np.stack([known[key][1] for key in keys]) if bounds else None
    return (
        np.stack([known[key][0] for key in keys]),
        sum(a.nbytes for a in acts.values()) // len(points),
        gradient_bounds,
    )


def _patterns(model, acts: dict, index) -> list:
    """Per point, a digest of everything its gradient depends on (see _path_gradients)."""
    n = len(acts[model.output_name])
    digests = [hashlib.blake2b(digest_size=16) for _ in range(n)]
    if index is not None:
        for digest, neuron in zip(digests, np.asarray(index).ravel()):
            digest.update(int(neuron).to_bytes(8, "little", signed=True))
    for layer in model.layers:
        cls = layer.class_name
        if cls in KERNEL:
            parts = acts[layer.name] > 0 if layer.activation == "relu" else None
        elif cls == "ReLU" or (cls == "Activation" and layer.activation == "relu"):
            parts = acts[layer.inputs[0]] > 0
        elif cls in MAX_POOL:
            parts = acts[layer.name + ":argmax"]
        elif cls in GLOBAL_MAX:
            x = acts[layer.inputs[0]]
            parts = x == x.max(axis=tuple(range(1, x.ndim - 1)), keepdims=True)
        else:
            continue  # linear in its input: the same map at every point
        if parts is None:
            continue
        for digest, part in zip(digests, parts):
            digest.update(np.packbits(part).data if part.dtype == bool else np.ascontiguousarray(part).data)
    return [digest.digest() for digest in digests]


class _Backward:
    def __init__(
        self,
        model: ReferenceModel,
        acts: dict,
        policy: Policy,
        keep_maps: bool,
        bn_fusion: str,
        observed: dict | None = None,
        bounds: bool = False,
    ):
        self.model, self.acts, self.policy = model, acts, policy
        self.keep_maps, self.bn_fusion = keep_maps, bn_fusion
        self.observed = observed or {}
        self.bounds = bounds
        self.heatmap_bound: Any = None
        self._rounding: Rounding | None = None  # the Rounding of the layer being walked, where its rule computed one
        # float32's forward pass rounds every pre-activation by up to this share of sum |x w| + |b| (the
        # dot products of all layers up to it, Higham's n u); a ReLU whose input is within it of 0 may be
        # on in one precision and off in the other
        self.forward_count = float(sum(_fan_in(layer) for layer in model.layers))
        self.forward_unit = FLOAT32_UNIT * self.forward_count
        # how near a tie a max-pooling window must be for float32 to decide it otherwise: a probable bound
        # (independent roundings, ROUNDING_SIGMAS standard deviations); a ReLU's sign uses the worst case,
        # forward_unit (integrated gradients walks many points near them)
        self.forward_reach = ROUNDING_SIGMAS * FLOAT32_UNIT * float(np.sqrt(self.forward_count))

    def run(self, head: np.ndarray, accounts: list) -> np.ndarray:
        relevance = {self.model.output_name: head}
        # innvestigate starts from its float32 output, which the forward pass has rounded
        # per element, the variance of how far float32 roundings may have moved the relevance: its square root is
        # the bound (rules.float32_bound). innvestigate starts from its own float32 output, off by up to
        # forward_unit of it: one relative error for all of the relevance, added as such (_coherent), not as noise
        errors = {self.model.output_name: np.zeros_like(head)} if self.bounds else {}
        for layer in reversed(self.model.layers):
            if layer.name not in relevance:
                continue
            r = relevance.pop(layer.name) if layer.name != self.model.input_name else relevance[layer.name]
            e = (
                (errors.pop(layer.name) if layer.name != self.model.input_name else errors[layer.name])
                if self.bounds
                else None
            )
            xs = [self.acts[p] for p in layer.inputs]
            seen = self._observed(layer.name, r)
            self._rounding = None
            if layer.name == self.model.input_name:
                rule, r_ins, mech, seen_mech = "input", [], zero_mechanisms(len(r)), None
            else:
                rule, r_ins, mech, seen_mech = self.layer(layer, xs, r, seen, e)
            axes = tuple(range(1, r.ndim))
            r_out_total = r.sum(axis=axes)
            r_in_total = sum(ri.reshape(len(ri), -1).sum(axis=1) for ri in r_ins) if r_ins else r_out_total.copy()
            maps = {"out": r, "in": r_ins} if self.keep_maps else None
            if self.policy.family == "gradient":
                mech, seen_mech = {}, None
            e_ins, local = (self._bound(layer, xs, r, e) if r_ins else ([], None)) if self.bounds else ([], None)
            accounts.append(
                LayerAccount(
                    layer.name,
                    layer.class_name,
                    rule,
                    r_out_total,
                    r_in_total,
                    mech,
                    maps,
                    seen_mech,
                    self._coherent(e, r) if maps is not None and e is not None else None,
                    local,
                )
            )
            for producer, ri in zip(layer.inputs, r_ins):
                relevance[producer] = relevance[producer] + ri if producer in relevance else ri
            for producer, ei in zip(layer.inputs, e_ins):
                errors[producer] = errors[producer] + ei if producer in errors else ei
        if self.bounds:
            self.heatmap_bound = self._coherent(errors[self.model.input_name], relevance[self.model.input_name])
        return relevance[self.model.input_name]

    def _coherent(self, variance: np.ndarray, relevance: np.ndarray) -> np.ndarray:
        """An element's bound: its roundings' (the square root of their variance) and the output's share."""
        return np.sqrt(variance) + self.forward_unit * np.abs(relevance)

    def _bound(self, layer: Layer, xs: list, r: np.ndarray, e: Any) -> tuple[list, Any]:
        """The rounding variance at each input of ``layer`` (float32_bound), and the layer's own most on the total."""
        batch = len(r)
        if self._rounding is not None:  # a rule's terms (apply_terms)
            return [self._rounding.variance], self._rounding.local
        cls, family = layer.class_name, self.policy.family
        x: Any = xs[0] if xs else None
        if cls == "Add" and (family == "lrp" or layer.config.get("canonized")):  # the z rule over the sum
            z = sum(xs[1:], xs[0].copy())
            ds = z + KERAS_EPSILON * (z == 0)
            absolute = sum(np.abs(xi) for xi in xs)
            carried, local = float32_bound(1.0, z, absolute, None, ds, r, e, (len(xs), 1), self.forward_count)
            return [np.square(xi) * carried for xi in xs], local.reshape(batch, -1).sum(axis=1)
        if cls in KERNEL and family == "gradient":
            g_bound = e
            if layer.activation == "relu":
                z = layer.op.forward(x, layer.kernel) + (layer.bias if layer.bias is not None else 0.0)
                pieces = _absolute_pieces(layer.kernel, layer.variants)
                absolute = sum(sign * layer.op.forward(np.abs(x), w) for w, sign in pieces)
                if layer.bias is not None:
                    absolute = absolute + np.abs(layer.bias)
                # a ReLU within float32's reach of 0 may be on in one precision and off in the other
                undecided = np.abs(z) < self.forward_unit * absolute
                g_bound = e * (z > 0) + np.square(r) * undecided
            return [layer.op.transpose(g_bound, _squared(layer.kernel, layer.variants), x.shape)], np.zeros(batch)
        if cls == "BatchNormalization" and family not in LIBRARY_FAMILIES:
            exact_k, _ = bn_affine(layer)
            return [Scale(layer.bn[-1], x.ndim).transpose(e, np.square(exact_k), x.shape)], np.zeros(batch)
        passes = family in ("lrp", *LIBRARY_FAMILIES)  # their activation layers pass relevance unchanged
        if cls == "ReLU" or (cls == "Activation" and not passes and layer.activation != "linear"):
            # a ReLU layer masks relevance by the sign of its input (LRP too): an input within float32's reach of
            # 0 (after an Add whose inputs nearly cancel) may be on in one precision and off in the other
            scale = np.abs(x).reshape(batch, -1).max(axis=1).reshape((batch,) + (1,) * (x.ndim - 1))
            undecided = (np.abs(x) < self.forward_unit * scale) & (x != 0)
            return [e * (x > 0) + np.square(r) * undecided], np.zeros(batch)
        if cls in MAX_POOL:
            return [self._max_pool_bound(layer, x, r, e)], np.zeros(batch)
        if cls == "TorchMultiply":  # variances scale with the square of the other factor
            return [_reduced(e * np.square(xs[1 - i]), xs[i].shape) for i in (0, 1)], np.zeros(batch)
        # every other layer moves relevance without arithmetic that rounds (a copy, a crop, a routing), or with
        # positive weights (average pooling's 1/n, applied to variances as they are: an overestimate)
        return self.layer(layer, xs, e, None)[1], np.zeros(batch)

    def _max_pool_bound(self, layer: Layer, x: np.ndarray, r: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Max pooling routes relevance to each window's maximum; where another cell is within float32's reach of
        it, float32 may pick that one: every such cell may receive the window's whole relevance."""
        op = layer.op
        routed = op.transpose(e, self.acts[layer.name + ":argmax"], x.shape)
        out = r.shape[1:-1]
        best = self.acts[layer.name]
        reach = self.forward_reach * np.abs(best)
        padded_x = op.w.pad(x, -np.inf)
        cells = [padded_x[op.w.slices(offset, out)] for offset in op.w.offsets()]
        near = [cell >= best - reach for cell in cells]
        # Cells equal to the maximum are equal in float32 too (the same inputs, the same arithmetic: ReLU zeros, a
        # uniform patch), and both pick the first: only another value within reach makes the routing uncertain.
        tied = sum(((cell >= best - reach) & (cell != best)).astype(int) for cell in cells) > 0
        if not tied.any():
            return routed
        share = np.where(tied, np.square(r), 0.0)
        padded = op.w.padded_zeros(r.shape[0], x.shape, r.dtype)
        for offset, n in zip(op.w.offsets(), near):
            padded[op.w.slices(offset, out)] += np.where(n, share, 0.0)
        return routed + op.w.crop(padded, tuple(x.shape[1:-1]))

    def _observed(self, name: str, r: np.ndarray):
        """The other implementation's relevance at this layer's output, if it has one of the same shape."""
        seen = self.observed.get(name)
        if seen is None or np.size(seen) != r.size:
            return None
        return np.asarray(seen, dtype=r.dtype).reshape(r.shape)  # summed in the reference's precision

    # one layer: (rule label, relevance at each input, mechanisms, mechanisms of the observed relevance or None)
    def layer(self, layer: Layer, xs: list, r: np.ndarray, seen=None, bound=None):
        cls, family = layer.class_name, self.policy.family
        batch = len(r)
        x: Any = xs[0] if xs else None

        def split(mechanism=None, of=None):
            """Mechanisms of r and of seen: ``of(relevance)`` is the part ``mechanism`` takes of it (linear)."""

            def one(relevance):
                mech = zero_mechanisms(batch)
                if mechanism is not None:
                    mech[mechanism] = of(relevance)
                return mech

            return one(r), (one(seen) if seen is not None else None)

        def total(relevance):
            return relevance.reshape(batch, -1).sum(axis=1)

        if family in LIBRARY_FAMILIES:
            library: Any = self.policy  # ZennitPolicy or CaptumPolicy (libraries.py)
            handled = library.layer(self, layer, xs, r, seen, bound, split, total)
            if handled is not None:
                return handled
        if cls in KERNEL:
            if family == "gradient":
                g = r * (self.acts[layer.name] > 0) if layer.activation == "relu" else r
                return ("gradient", [layer.op.transpose(g, layer.kernel, x.shape)], *split())
            rule = self.policy.kernel_rule(layer)
            if rule is None:
                raise UnsupportedRule(f"no rule of {self.policy.analyzer} applies to layer {layer.name!r}")
            assert layer.kernel is not None  # _setup gives every KERNEL layer its kernel
            known = (x, layer.kernel, self.acts[layer.name + ":xw"])
            z = None
            if rule.kind == "gamma":  # zennit's gamma picks its term by the sign of the layer's own output
                z = known[2] + layer.bias if layer.bias is not None else known[2]
            r_in, mech, seen_mech, self._rounding = apply_terms(
                layer.op,
                terms(rule, x, layer.kernel, layer.bias, layer.variants, z),
                r,
                x.shape,
                known,
                layer.variants,
                observed=seen,
                bound=bound,
                forward=self.forward_count,
            )
            return rule.label, [r_in], mech, seen_mech
        if cls == "BatchNormalization":
            exact_k, _ = bn_affine(layer)
            scale = Scale(layer.bn[-1], x.ndim)
            if family != "lrp":
                r_in = scale.transpose(r, exact_k, x.shape)
                if family != "deep_taylor":
                    return ("gradient", [r_in], *split())
                return (
                    "gradient",
                    [r_in],
                    *split("gradient", lambda rr: total(scale.transpose(rr, exact_k, x.shape) - rr)),
                )
            k, b = bn_affine(layer, self.bn_fusion)
            rule = self.policy.bn_rule
            if rule is None:
                raise UnsupportedRule(f"no rule of {self.policy.analyzer} applies to layer {layer.name!r}")
            # the fused bias is beta - mean k, computed in float32: it may cancel, and carries the rounding of its terms
            beta, mean = layer.bn[1], layer.bn[2]
            made_of = {BIAS_MAGNITUDE: scale._b(np.abs(beta) + np.abs(mean * k) + np.abs(b))}
            r_in, mech, seen_mech, self._rounding = apply_terms(
                scale,
                terms(rule, x, k, scale._b(b)),
                r,
                x.shape,
                cache=made_of,
                observed=seen,
                bound=bound,
                forward=self.forward_count,
            )
            return rule.label + ("" if self.bn_fusion == "exact" else " [bn as innvestigate]"), [r_in], mech, seen_mech
        if cls == "Add":
            if family == "lrp":
                return self.z_sum(xs, r, split, ("safe", KERAS_EPSILON), "z")
            if family != "deep_taylor":
                return ("gradient", [r.copy() for _ in xs], *split())
            return ("gradient", [r.copy() for _ in xs], *split("gradient", lambda rr: (len(xs) - 1) * total(rr)))
        if cls in AVG_POOL or cls in GLOBAL_AVG:
            if family == "lrp":
                return self.pooled_z(layer, x, r, seen, bound, ("safe", KERAS_EPSILON), "z")
            op = layer.op if cls in AVG_POOL else _GlobalAverage(layer)
            return ("gradient", [op.transpose(r, None, x.shape)], *split())
        if cls in MAX_POOL:
            return ("gradient", [layer.op.transpose(r, self.acts[layer.name + ":argmax"], x.shape)], *split())
        if cls in GLOBAL_MAX:
            axes = tuple(range(1, x.ndim - 1))
            best = x.max(axis=axes, keepdims=True)
            ties = x == best
            share = ties / ties.sum(axis=axes, keepdims=True)
            return ("gradient", [share * r.reshape(best.shape)], *split())
        if cls in IDENTITY:
            return ("gradient", [r], *split())
        if cls in ("Flatten", "Reshape"):
            if flattens_channels_first(layer) and x.ndim > 2:
                moved = np.moveaxis(x, -1, 1).shape
                return ("gradient", [np.moveaxis(r.reshape(moved), 1, -1)], *split())
            return ("gradient", [r.reshape(x.shape)], *split())
        if cls in PADDING:
            pads = padding_of(layer, x.ndim - 2)
            index = (slice(None), *tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1])))
            return ("gradient", [r[index]], *split("dropped", lambda rr: total(rr[index]) - total(rr)))
        if cls == "TorchMultiply":  # a product in a forward: its gradient to each factor (the other factor times r)
            r_ins = [_reduced(r * xs[1 - i], xs[i].shape) for i in (0, 1)]
            return (
                "gradient",
                r_ins,
                *split(
                    "gradient", lambda rr: sum(total(_reduced(rr * xs[1 - i], xs[i].shape)) for i in (0, 1)) - total(rr)
                ),
            )
        if cls == "Concatenate":
            axis = layer.config.get("axis", -1) % r.ndim
            cuts = np.cumsum([xi.shape[axis] for xi in xs])[:-1]
            return ("gradient", list(np.split(r, cuts, axis=axis)), *split())
        if cls == "Activation" and family == "lrp":
            return ("pass", [r], *split())
        if cls in ("Activation", "ReLU"):
            if cls == "Activation" and layer.activation == "linear":
                return ("gradient", [r], *split())
            return ("gradient", [r * (x > 0)], *split("dropped", lambda rr: -total(rr * (x <= 0))))
        if cls == "TorchActivation":  # zennit passes it (libraries.py); no derivative of it is written here
            raise UnsupportedLayer(
                layer.name, layer.config.get("torch_class", cls), f"no derivative of it for {family}"
            )
        layer.refuse()

    def pooled_z(self, layer: Layer, x, r: np.ndarray, seen, bound, stabilizer, label: str):
        """The z rule over an average pooling's inputs (its weights are positive: no bias, no split)."""
        op = layer.op if layer.class_name in AVG_POOL else _GlobalAverage(layer)
        r_in, mech, seen_mech, self._rounding = apply_terms(
            op,
            [(1.0, [(x, None, 1.0)], None, stabilizer)],
            r,
            x.shape,
            observed=seen,
            bound=bound,
            forward=self.forward_count,
        )
        return label, [r_in], mech, seen_mech

    @staticmethod
    def z_sum(xs, r, split, stabilizer, label: str):
        """The z rule over the sum of an addition's inputs, no bias: innvestigate's Add (safe division, where a zero
        sum drops its relevance) and zennit's Norm on its Sum module (stabilised, the stabiliser's share)."""
        z = sum(xs[1:], xs[0].copy())
        ds = stabilize(z, stabilizer)
        s = r / ds
        axes = tuple(range(1, r.ndim))
        mechanism = "dropped" if stabilizer[0] == "safe" else "stabilizer"
        return (label, [xi * s for xi in xs], *split(mechanism, lambda rr: (rr * (z - ds) / ds).sum(axis=axes)))


def _reduced(value: np.ndarray, shape: tuple) -> np.ndarray:
    """``value`` summed over the axes a factor of ``shape`` was broadcast along."""
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, value.shape)) if n == 1 and m != 1)
    return value.sum(axis=axes, keepdims=True) if axes else value


def _fan_in(layer: Layer) -> int:
    kernel = getattr(layer, "kernel", None)
    return int(np.prod(kernel.shape[:-1])) if kernel is not None and np.ndim(kernel) >= 2 else 0


class _GlobalAverage:
    """Global average pooling as a linear map (weights 1/n over the spatial axes)."""

    def __init__(self, layer: Layer):
        self.keepdims = layer.config.get("keepdims", False)

    def forward(self, x, kernel=None):
        y = x.mean(axis=tuple(range(1, x.ndim - 1)), keepdims=True)
        return y if self.keepdims else y.reshape(len(x), -1)

    def transpose(self, g, kernel, x_shape):
        n = int(np.prod(x_shape[1:-1]))
        g = g.reshape((x_shape[0],) + (1,) * (len(x_shape) - 2) + (x_shape[-1],))
        return np.broadcast_to(g / n, x_shape).copy()


__all__ = ["ANALYZERS", "MECHANISMS", "LayerAccount", "Policy", "ReferenceResult", "explain"]
