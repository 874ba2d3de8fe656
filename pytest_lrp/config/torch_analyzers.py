"""The PyTorch analyzers a rule may name, with the parameters each accepts, known without importing torch.

Names say which library implements the rule: ``zennit.<composite>`` (zennit's registered composites),
``zennit.rule.<rule>`` (one zennit rule on every convolution and linear layer, zennit's own layer map for the
rest), zennit's attributors, and captum's attribution methods. pytorch/analyzers.py builds them.
``lxt.*`` explain transformers' models with LXT (transformer/analyzers.py).
"""

from __future__ import annotations

_STABLE = frozenset({"stabilizer", "zero_params", "canonizers"})
_COMPOSITE = frozenset({"epsilon", "stabilizer", "zero_params", "canonizers"})

ZENNIT_COMPOSITES = {
    "epsilon_plus": ("EpsilonPlus", _COMPOSITE),
    "epsilon_plus_flat": ("EpsilonPlusFlat", _COMPOSITE),
    "epsilon_alpha2_beta1": ("EpsilonAlpha2Beta1", _COMPOSITE),
    "epsilon_alpha2_beta1_flat": ("EpsilonAlpha2Beta1Flat", _COMPOSITE),
    "epsilon_gamma_box": ("EpsilonGammaBox", _COMPOSITE | {"gamma", "low", "high"}),
}
ZENNIT_RULES = {
    "epsilon": ("Epsilon", frozenset({"epsilon", "zero_params", "canonizers"})),
    "zplus": ("ZPlus", _STABLE),
    "alpha_beta": ("AlphaBeta", _STABLE | {"alpha", "beta"}),
    "gamma": ("Gamma", _STABLE | {"gamma"}),
    "wsquare": ("WSquare", _STABLE),
    "flat": ("Flat", _STABLE),
    "zbox": ("ZBox", _STABLE | {"low", "high"}),
}
CAPTUM_LRP_RULES = ("epsilon", "gamma", "alpha1_beta0", "identity")

TORCH_ANALYZERS: dict[str, frozenset] = {
    **{f"zennit.{name}": params for name, (_, params) in ZENNIT_COMPOSITES.items()},
    **{f"zennit.rule.{name}": params for name, (_, params) in ZENNIT_RULES.items()},
    "zennit.gradient": frozenset({"canonizers"}),
    "zennit.integrated_gradients": frozenset({"n_iter", "reference_inputs", "canonizers"}),
    "captum.lrp": frozenset({"rule", "rules", "epsilon", "gamma"}),
    "captum.input_x_gradient": frozenset(),
    "captum.integrated_gradients": frozenset({"n_steps", "method", "reference_inputs"}),
    "captum.deep_lift": frozenset({"reference_inputs"}),
    # LXT: AttnLRP and CP-LRP (its efficient patches), AttnLRP by its explicit rules, and input x gradient
    # of the unpatched model (the baseline LXT's rules are compared with); dtype: float32 or bfloat16.
    **{name: frozenset({"dtype"}) for name in ("lxt.attnlrp", "lxt.cp_lrp", "lxt.explicit", "lxt.input_x_gradient")},
}
LXT_DTYPES = ("float32", "bfloat16")
# LXT's relevance rules: conservation is their claim, and their leaks are split by mechanism.
LXT_RULES = ("lxt.attnlrp", "lxt.cp_lrp", "lxt.explicit")
# Attributions that sum to f(x) - f(reference): their target is output_minus_reference, reference 0 by default.
WITH_REFERENCE = ("zennit.integrated_gradients", "captum.integrated_gradients", "captum.deep_lift")
# Analyzers whose heatmap is a gradient, not relevance: no conservation expected.
GRADIENTS = ("zennit.gradient",)


def implementation_of(analyzer: str) -> str:
    """The library whose analysis a rule tests, as messages name it."""
    family = analyzer.split(".")[0]
    return family if family in ("zennit", "captum", "lxt") else "innvestigate"


def is_torch_analyzer(name: str) -> bool:
    return name.split(".")[0] in ("zennit", "captum", "lxt")


def is_lxt_analyzer(name: str) -> bool:
    """LXT's analyzers explain transformers' models (token ids in), the others any other PyTorch module."""
    return name.split(".")[0] == "lxt"


def torch_param_message(analyzer: str, params: dict) -> str | None:
    """The complaint about the first parameter ``analyzer`` does not accept (or a bad value), or None."""
    accepted = TORCH_ANALYZERS[analyzer]
    for name in params:
        if name not in accepted:
            import difflib

            match = difflib.get_close_matches(str(name), sorted(accepted), n=1)
            hint = f"did you mean '{match[0]}'?" if match else f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
            return f"analyzer '{analyzer}' does not accept '{name}' ({hint})"
    if "dtype" in params and params["dtype"] not in LXT_DTYPES:
        return f"'dtype' is one of {', '.join(LXT_DTYPES)}, got {params['dtype']!r}"
    canonizers = params.get("canonizers")
    if canonizers not in (None, "auto") and not (
        isinstance(canonizers, list) and all(isinstance(c, str) and c for c in canonizers)
    ):
        return f"'canonizers' is a list of zennit canonizer class names, e.g. [SequentialMergeBatchNorm], or auto, got {canonizers!r}"
    if analyzer in ("zennit.rule.zbox", "zennit.epsilon_gamma_box"):
        missing = [bound for bound in ("low", "high") if not isinstance(params.get(bound), (int, float))]
        if missing:
            return f"analyzer '{analyzer}' needs the input's bounds as numbers: {', '.join(missing)} (e.g. low: 0.0, high: 1.0)"
    if analyzer == "captum.lrp":
        rules = [params["rule"]] if "rule" in params else []
        layer_rules = params.get("rules", {})
        if not isinstance(layer_rules, dict):
            return f"'rules' maps module class names to rules, e.g. {{Conv2d: gamma, Linear: epsilon}}, got {layer_rules!r}"
        for rule in [*rules, *layer_rules.values()]:
            if rule not in CAPTUM_LRP_RULES:
                return f"captum's LRP rule {rule!r} is not one of {', '.join(CAPTUM_LRP_RULES)}"
    return None
