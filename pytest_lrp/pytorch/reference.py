"""The numpy reference beside a PyTorch analysis: the model read by graph.py, judged by checks/reference_run.py.

The reference computes channels-last; the inputs, the heatmaps and the relevance recorded per module go to it
in that layout, and what comes back per element (the formula's heatmap, its rounding bound) returns to the
model's own. A container's own operations (``layer1.0 (own operations)``: the addition of a residual block)
are accounted together with the reference's functional layers of that container (``layer1.0: add``).
"""

from __future__ import annotations

from dataclasses import replace

from ..base.lazy import np
from ..checks.comparison import ReferenceComparison
from ..checks.reference_run import judge
from .graph import MERGING, SUMMING, channels_first, channels_last, reference_model

# The analyzers the reference has a formula for, under its names; zennit's and captum's LRP keep theirs.
GRADIENT_NAMES = {
    "zennit.gradient": "gradient",
    "captum.input_x_gradient": "input_t_gradient",
    "zennit.integrated_gradients": "integrated_gradients",
    "captum.integrated_gradients": "integrated_gradients",
}
NO_FORMULA = {"captum.deep_lift": "captum's DeepLift"}


def _reference_params(rule) -> dict:
    """The rule's parameters as the reference names them: integrated gradients' steps and approximation (zennit: a
    right Riemann sum of n_iter = 20 points; captum: n_steps = 50 Gauss-Legendre points unless ``method`` says)."""
    params = {key: value for key, value in rule.params.items() if key != "canonizers"}
    if rule.analyzer == "zennit.integrated_gradients":
        return {"steps": int(params.pop("n_iter", 20)), "method": "riemann_right", **params}
    if rule.analyzer == "captum.integrated_gradients":
        steps, method = int(params.pop("n_steps", 50)), params.pop("method", "gausslegendre")
        return {"steps": steps, "method": method, **params}
    return params


def judged(model, module, rule, x: np.ndarray, analysis, maps: dict, canonizers: list):
    """(ReferenceComparison, LeakAccount or None) for one analysis of ``module`` (the model, softmax stripped)."""
    if rule.analyzer in NO_FORMULA:
        return _skipped(rule, f"the numpy reference has no formula for {NO_FORMULA[rule.analyzer]}")
    unknown = [name for name in canonizers if name not in MERGING + SUMMING]
    if unknown:
        return _skipped(rule, f"the numpy reference does not know zennit's canonizer {unknown[0]}")
    analyzer = GRADIENT_NAMES.get(rule.analyzer, rule.analyzer)
    params = _reference_params(rule)
    key = (tuple(sorted(canonizers)), tuple(x.shape[1:]))
    try:
        built = model.reference_models.get(key)
        if built is None:
            built = model.reference_models[key] = reference_model(module, tuple(x.shape[1:]), tuple(canonizers))
    except Exception as exc:  # remembered: every rule of this model and set-up skips (or fails) with the same line
        built = model.reference_models[key] = exc

    def build():
        if isinstance(built, Exception):
            raise built.with_traceback(None)
        return built

    layers, observed = analysis.layers, {}
    if not isinstance(built, Exception):
        layers = _grouped(analysis.layers, built)
        readers: dict = {}
        for layer in built.layers:
            for source in layer.inputs:
                readers.setdefault(source, []).append(layer.name)
        observed = {name: (channels_last(array), readers[name]) for name, array in maps.items() if readers.get(name)}
    comparison, account = judge(
        build,
        rule,
        channels_last(x),
        channels_last(analysis.heatmaps),
        analysis.outputs,
        analysis.neurons,
        analysis.sums - analysis.targets,
        layers,
        observed,
        model.name,
        analyzer,
        params,
        positive_head=rule.target == "positive_output",
    )
    if comparison is not None:
        for field in ("formula_heatmap", "heatmap_bound"):
            value = getattr(comparison, field, None)
            if value is not None:
                setattr(comparison, field, channels_first(value))
    return comparison, account


def _skipped(rule, why: str):
    return ReferenceComparison(tolerance=rule.reference_tolerance, skipped=why), None


def _grouped(layers: list, built) -> list:
    """The entries of a container's own operations, with the reference's functional layers of it as members."""
    grouped = []
    for entry in layers:
        if entry.name.endswith(" (own operations)"):
            owner = entry.name[: -len(" (own operations)")]
            members = tuple(layer.name for layer in built.layers if layer.name.startswith(f"{owner}: "))
            if members:
                entry = replace(entry, members=members)
        grouped.append(entry)
    return grouped
